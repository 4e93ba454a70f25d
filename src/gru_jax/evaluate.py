"""Score a saved checkpoint on a test archive: `python -m gru_jax.evaluate --checkpoint runs/pmgru`."""

import argparse
import logging
import sys

from gru_jax.cli import add_common_flags, run_main

logger = logging.getLogger(__name__)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m gru_jax.evaluate",
        description="Restore a checkpoint and report accuracy, the confusion matrix and per-category accuracy.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="a run's output directory, its checkpoints/ directory, or one step directory")
    parser.add_argument("--data", help="test archive (default: the run's test archive)")
    parser.add_argument("--output", help="write the metrics to this JSON file")
    parser.add_argument("--predictions", help="write each scored review's label, prediction and log-probabilities to this CSV file")
    parser.add_argument("--batch-size", type=int, default=None, help="reviews per evaluation batch (default: the run's)")
    parser.add_argument("--embeddings", help="word vectors (.kv, .bin, .bin.gz, .txt or .vec) to use in place of the "
                        "checkpoint's table; their dimension must be the model's input size")
    parser.add_argument("--embeddings-unicode-errors", choices=("strict", "ignore", "replace"), default="strict",
                        help="how to treat words that are not valid UTF-8 in word2vec files (default strict)")
    add_common_flags(parser)
    return parser


def evaluate_from_args(args):
    from gru_jax.archives import check_same_categories, load_archive
    from gru_jax.errors import ConfigError
    from gru_jax.metrics import format_report
    from gru_jax.model_io import load_trained_model, table_from_vectors
    from gru_jax.reports import write_json
    from gru_jax.training import evaluate_encoded

    trained = load_trained_model(args.checkpoint)
    config = trained.metadata["config"]
    data_path = args.data or config.get("test_data")
    if not data_path:
        raise ConfigError("the run had no test archive. Pass --data with a sentiment archive.")
    batch_size = args.batch_size or config.get("eval_batch_size", 256)
    if batch_size < 1:
        raise ConfigError(f"batch-size = {batch_size} is invalid: it must be at least 1.")

    archive = load_archive(data_path)
    if trained.metadata.get("category_names"):
        check_same_categories(trained.training_archive_stub(), archive)
    vocabulary, table = trained.vocabulary, trained.table
    if args.embeddings:
        vocabulary, table = table_from_vectors(trained, args.embeddings, archive.reviews,
                                               args.embeddings_unicode_errors)
    encoded = vocabulary.encode(archive.reviews, config.get("max_length"))
    logger.info("%s: %s", archive.path, encoded.summary())
    if not encoded.token_ids:
        raise ConfigError(f"{archive.path}: no review contains a word of the checkpoint's vocabulary.")
    metrics, log_probs = evaluate_encoded(trained.predict, trained.params, table, encoded, archive,
                                          batch_size, config.get("max_batch_tokens"))
    metrics["checkpoint"] = str(trained.path)
    metrics["data"] = str(archive.path)
    print(format_report(metrics, title=f"{trained.metadata['model']['cell']} on {archive.path}"))
    if args.output:
        write_json(args.output, metrics)
        print(f"wrote {args.output}")
    if args.predictions:
        write_predictions(args.predictions, archive, encoded.review_indices, log_probs)
        print(f"wrote {args.predictions}")


def write_predictions(path, archive, review_indices, log_probs):
    """Write one CSV row per scored review: its position in the archive, category, label, prediction and log-probabilities."""
    import csv
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["review", "category", "label", "prediction"] + [f"log_prob_{i}" for i in range(log_probs.shape[1])])
        for index, row in zip(review_indices, log_probs):
            writer.writerow([int(index), archive.category_of(index), int(archive.labels[index]), int(row.argmax())]
                            + [repr(float(value)) for value in row])
    os.replace(partial, path)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(evaluate_from_args, args)


if __name__ == "__main__":
    sys.exit(main())
