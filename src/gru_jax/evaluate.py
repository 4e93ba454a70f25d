"""Score a saved checkpoint on a test archive: `python -m gru_jax.evaluate --checkpoint runs/pmgru`."""

import argparse
import contextlib
import csv
import os
import sys
from pathlib import Path

from gru_jax.cli import add_common_flags, run_main


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m gru_jax.evaluate",
        description="Restore a checkpoint and report accuracy, the confusion matrix and per-category accuracy.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="a run's output directory, its checkpoints/ directory, or one step directory")
    parser.add_argument("--data", nargs="+",
                        help="one or more test archives, scored one after another as a single test set "
                        "(default: the run's test archive)")
    parser.add_argument("--output", help="write the metrics to this JSON file")
    parser.add_argument("--predictions", help="write each scored review's label, prediction, log-probabilities and "
                        "archive to this CSV file")
    parser.add_argument("--batch-size", type=int, default=None, help="reviews per evaluation batch (default: the run's)")
    parser.add_argument("--embeddings", help="word vectors (.kv, .bin, .bin.gz, .txt or .vec) to use in place of the "
                        "checkpoint's table; their dimension must be the model's input size")
    parser.add_argument("--embeddings-unicode-errors", choices=("strict", "ignore", "replace"), default="strict",
                        help="how to treat words that are not valid UTF-8 in word2vec files (default strict)")
    add_common_flags(parser)
    return parser


def evaluate_from_args(args):
    from gru_jax.errors import ConfigError
    from gru_jax.metrics import format_report
    from gru_jax.model_io import load_matching_vectors, load_trained_model
    from gru_jax.reports import write_json
    from gru_jax.scoring import evaluate_archives

    trained = load_trained_model(args.checkpoint)
    config = trained.metadata["config"]
    data_paths = args.data or ([config["test_data"]] if config.get("test_data") else [])
    if not data_paths:
        raise ConfigError("the run had no test archive. Pass --data with a sentiment archive.")
    batch_size = args.batch_size or config.get("eval_batch_size", 256)
    if batch_size < 1:
        raise ConfigError(f"batch-size = {batch_size} is invalid: it must be at least 1.")

    vectors = None
    if args.embeddings:
        vectors = load_matching_vectors(trained, args.embeddings, args.embeddings_unicode_errors)
    with PredictionsFile(args.predictions) if args.predictions else contextlib.nullcontext() as predictions:
        on_scored = predictions.write if predictions else None
        metrics = evaluate_archives(trained, data_paths, batch_size, on_scored=on_scored, vectors=vectors,
                                    vectors_source=args.embeddings)
    metrics["checkpoint"] = str(trained.path)
    metrics["data"] = [str(path) for path in data_paths]
    described = data_paths[0] if len(data_paths) == 1 else f"{len(data_paths)} archives"
    print(format_report(metrics, title=f"{trained.metadata['model']['cell']} on {described}"))
    if args.output:
        write_json(args.output, metrics)
        print(f"wrote {args.output}")
    if args.predictions:
        print(f"wrote {args.predictions}")


class PredictionsFile:
    """A CSV file with one row per scored review: its position in its archive, category, label,
    prediction, log-probabilities and archive path.

    Rows are written archive by archive as they are scored. The file is written under a temporary
    name and renamed when the `with` block ends without an error, so a failed run leaves no partial file.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._stream = open(self._partial, "w", newline="")
        self._writer = csv.writer(self._stream)
        self._header_written = False

    def write(self, archive, review_indices, log_probs):
        """Add the rows of one archive.

        Args:
          archive: the `SentimentArchive` the reviews come from.
          review_indices: <int64>[num_scored], positions in the archive.
          log_probs: <float32>[num_scored, num_classes].
        """
        if not self._header_written:
            self._writer.writerow(["review", "category", "label", "prediction"]
                                  + [f"log_prob_{i}" for i in range(log_probs.shape[1])] + ["archive"])
            self._header_written = True
        for index, row in zip(review_indices, log_probs):
            self._writer.writerow([int(index), archive.category_of(index), int(archive.labels[index]), int(row.argmax())]
                                  + [repr(float(value)) for value in row] + [str(archive.path)])

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self._stream.close()
        if error_type is None:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)
        return False


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(evaluate_from_args, args)


if __name__ == "__main__":
    sys.exit(main())
