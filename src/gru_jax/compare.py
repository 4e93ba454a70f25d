"""Compare GRU and pmGRU over several seeds: `python -m gru_jax.compare --seeds 0 1 2`."""

import argparse
import logging
import sys

from gru_jax.cli import add_common_flags, run_main
from gru_jax.train import SHARED_CONFIG_FLAGS, add_config_flags

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "runs/compare"
DEFAULT_SEEDS = (0, 1, 2)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m gru_jax.compare",
        description="Train (or load) both cells on the same data, word vectors and batches for each seed, and "
        "write a report: accuracy over seeds with confidence intervals, McNemar's test, confusion matrices, "
        "per-category accuracy, loss curves, model sizes and training time. Flags override the config file; both "
        "override defaults.",
    )
    parser.add_argument("--config", help="TOML file with settings, e.g. configs/default.toml; its cell is ignored")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="seeds of initialization and data order; each cell is trained once per seed "
                        f"(default {' '.join(map(str, DEFAULT_SEEDS))}). The word vectors are trained once for all "
                        "runs, with --word2vec-seed or else the config file's seed (default 0). With --checkpoints, "
                        "only the runs with these seeds are compared")
    add_config_flags(parser)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"where the report and the runs go (default {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--checkpoints", nargs="+",
                        help="load these runs instead of training: output directories of gru_jax.train runs, or "
                        "an earlier compare output directory; the test data is --test-data or the first run's")
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs from their latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace runs left in --output-dir by an earlier compare")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_common_flags(parser)
    return parser


def compare_from_args(args):
    from pathlib import Path

    from gru_jax.comparison import check_runs, load_runs, summarize, train_runs
    from gru_jax.comparison_report import summary_table, write_comparison
    from gru_jax.config import make_config
    from gru_jax.errors import ConfigError
    from gru_jax.parallel import DataParallel

    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed. Give each seed once.")
    output_dir = Path(args.output_dir)
    parallel = DataParallel()

    if args.checkpoints:
        ignored = [key for key in SHARED_CONFIG_FLAGS if key != "test_data" and getattr(args, key) is not None]
        if args.config or ignored:
            logger.warning("--checkpoints loads trained runs, so --config and the training flags (%s) are ignored",
                           ", ".join("--" + key.replace("_", "-") for key in ignored) or "none given")
        runs, settings = load_runs(args.checkpoints, test_data=args.test_data, seeds=args.seeds, parallel=parallel)
    else:
        config = make_config(args.config, {key: getattr(args, key) for key in SHARED_CONFIG_FLAGS})
        if not config.test_data:
            raise ConfigError("compare needs a test archive. Pass --test-data.")
        runs, settings = train_runs(config, args.seeds or DEFAULT_SEEDS, output_dir, resume=args.resume,
                                    overwrite=args.overwrite, progress_bar=not args.no_progress and sys.stderr.isatty(),
                                    parallel=parallel)
    settings["devices"] = parallel.describe()

    check_runs(runs)
    summary = summarize(runs, settings)
    write_comparison(summary, output_dir)
    print(summary_table(summary))
    for warning in summary["warnings"]:
        print(f"\nwarning: {warning}")
    if summary["mcnemar"]:
        mcnemar = summary["mcnemar"]
        first, second = mcnemar["cells"]
        verdict = "significant" if mcnemar["significant"] else "not significant"
        print(f"\nMcNemar (seed {mcnemar['seed']}): {mcnemar['only_a_correct']} reviews only {first} got right, "
              f"{mcnemar['only_b_correct']} only {second}; p = {mcnemar['p_value']:.4g}, {verdict} at "
              f"{mcnemar['alpha']}")
    print(f"wrote {output_dir}/: report.md, comparison.json, confusion_matrices.png, accuracy.png, loss_curves.png")


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(compare_from_args, args)


if __name__ == "__main__":
    sys.exit(main())
