"""Train a GRU or pmGRU sentiment classifier: `python -m gru_jax.train --cell pmgru`."""

import argparse
import sys

from gru_jax.cli import add_common_flags, run_main
from gru_jax.config import make_config
from gru_jax.metrics import format_report


def add_config_flags(parser):
    """Add the flags of the model, data, word vectors and optimization (all but --cell, --seed and --output-dir)."""
    parser.add_argument("--num-layers", type=int, help="stacked recurrent layers (default: gru 2, pmgru 1)")
    parser.add_argument("--hidden-size", type=int, help="size of each layer's hidden state (default 100)")
    parser.add_argument("--train-data", help="training archive sentiment_dataset_train_N.tar.gz (default: shipped _200)")
    parser.add_argument("--test-data", help="test archive (default: shipped _200); an empty string skips testing")
    parser.add_argument("--embeddings", help="word vectors: .kv, .bin, .bin.gz, .txt or .vec; default trains "
                        "word2vec on the training reviews")
    parser.add_argument("--embeddings-unicode-errors", choices=("strict", "ignore", "replace"),
                        help="how to treat words that are not valid UTF-8 in word2vec files (default strict)")
    parser.add_argument("--cache-dir", help="where in-corpus word2vec vectors are cached (default ~/.cache/gru_jax)")
    parser.add_argument("--epochs", type=int, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, help="reviews per optimizer step")
    parser.add_argument("--learning-rate", type=float, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, help="SGD momentum")
    parser.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), help="learning-rate schedule: constant, or cosine decay to 0")
    parser.add_argument("--word2vec-seed", type=int, help="seed of the in-corpus word2vec vectors (default: --seed)")
    parser.add_argument("--max-length", type=int, help="keep at most this many words of each review")
    parser.add_argument("--log-every", type=int, help="log the average loss every this many steps")
    parser.add_argument("--checkpoint-every", type=int, help="also save a checkpoint every this many steps")
    parser.add_argument("--sort-pool", type=int, help="training batches are cut from pools of this many batches' "
                        "worth of reviews sorted by length (default 8; 1 disables the sorting)")
    parser.add_argument("--unroll", type=int, help="time steps per iteration of the compiled scan loop")
    parser.add_argument("--recurrent-loop", choices=("chunked", "scan"),
                        help="chunked loops with a hand-written gradient (default, faster) or Flax's nn.scan")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m gru_jax.train",
        description="Train a GRU or pmGRU sentiment classifier on DLStudio sentiment archives and report "
        "test accuracy and the confusion matrix. Flags override the config file; both override defaults.",
    )
    parser.add_argument("--config", help="TOML file with settings, e.g. configs/default.toml")
    parser.add_argument("--cell", choices=None, help="recurrent cell: gru or pmgru (default pmgru)")
    add_config_flags(parser)
    parser.add_argument("--seed", type=int, help="seed of initialization, data order and, unless --word2vec-seed "
                        "is given, word2vec")
    parser.add_argument("--output-dir", help="run directory; '{cell}' is replaced by the cell (default runs/{cell})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_common_flags(parser)
    return parser


# The TrainConfig fields that add_config_flags sets; gru_jax.compare takes these too.
SHARED_CONFIG_FLAGS = ("num_layers", "hidden_size", "train_data", "test_data", "embeddings",
                       "embeddings_unicode_errors", "cache_dir", "epochs", "batch_size", "learning_rate", "momentum",
                       "clip_norm", "lr_schedule", "word2vec_seed", "max_length", "log_every", "checkpoint_every",
                       "sort_pool", "unroll", "recurrent_loop")
CONFIG_FLAGS = ("cell", "seed", "output_dir") + SHARED_CONFIG_FLAGS


def train_from_args(args):
    from gru_jax.experiment import resolve_output_dir, run_training

    config = make_config(args.config, {key: getattr(args, key) for key in CONFIG_FLAGS})
    metrics = run_training(config, resume=args.resume, overwrite=args.overwrite,
                           progress_bar=not args.no_progress and sys.stderr.isatty())
    output_dir = resolve_output_dir(config)
    print(f"trained {config.cell} for {metrics['epochs']} epochs ({metrics['steps']} steps, "
          f"{metrics['train_seconds']:.1f} s, {metrics['train_reviews_per_second']:.0f} reviews/s)")
    if "test" in metrics:
        print(format_report(metrics["test"], title=f"{config.cell} on {metrics['test_data']}"))
    print(f"wrote {output_dir}/: checkpoints/, metrics.json, config.json, loss.png")


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(train_from_args, args)


if __name__ == "__main__":
    sys.exit(main())
