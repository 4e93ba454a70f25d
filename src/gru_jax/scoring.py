"""Scoring reviews batch by batch: encoding, padding, embedding and prediction never hold a whole test set.

Only a DLStudio archive itself is read whole, because it is a single pickle. Evaluating several
archives reads them one after another, so peak memory is that of the largest archive, not of their sum.
"""

import logging
import time

import jax
import numpy as np

from gru_jax.archives import check_same_categories, load_archive
from gru_jax.batching import stream_batches
from gru_jax.errors import ConfigError
from gru_jax.metrics import MetricsAccumulator
from gru_jax.parallel import DataParallel
from gru_jax.embeddings import build_table
from gru_jax.vocab import Vocabulary, encoding_summary

logger = logging.getLogger(__name__)


def score_batches(predict, params, table, batches, parallel=None):
    """Run `predict` on each batch and yield the results of its real rows.

    The host prepares and dispatches the next batch before it reads the previous batch's results, so
    host and device work at the same time.

    Args:
      predict: jitted `predict(params, table, token_ids, lengths)`, see `training.make_predict`.
      params, table: placed by `parallel.replicate`.
      batches: an iterable of `Batch`es whose row count is a multiple of `parallel.num_devices`.
      parallel: a `DataParallel`; None uses one device.

    Yields:
      (indices <int64>[num_real], log_probs <float32>[num_real, num_classes]) per batch.
    """
    parallel = parallel or DataParallel(jax.devices()[:1])
    pending = None
    for batch in batches:
        token_ids, lengths = parallel.split_batch((batch.token_ids, batch.lengths))
        log_probs = predict(params, table, token_ids, lengths)
        if pending is not None:
            yield _real_rows(parallel, *pending)
        pending = (batch.indices, log_probs)
    if pending is not None:
        yield _real_rows(parallel, *pending)


def scoring_table(predict, params, table, num_words):
    """Return the predict function and table with which to score `num_words` words.

    A `training.Predictor` can apply the first layer's input weights to each table row once
    (`project_table`) and then look the projected rows up per word, which gives the same scores up to
    float32 rounding. That saves work when the table has fewer rows than there are words to score;
    otherwise, or for a plain predict function, `predict` and `table` come back unchanged.
    """
    if num_words <= len(table) or not hasattr(predict, "project_table"):
        return predict, table
    return predict.predict_projected, predict.project_table(params, table)


def _real_rows(parallel, indices, log_probs):
    real = indices >= 0
    return indices[real], parallel.fetch(log_probs)[real]


def encode_stream(vocabulary, reviews, max_length, counts):
    """Yield (index, token_ids) for each review that keeps a word, and add to `counts` what was removed.

    Args:
      counts: a dict with integer entries total_tokens, dropped_tokens, truncated_tokens and
        empty_reviews, updated as reviews are read.
    """
    for index, review in enumerate(reviews):
        ids, dropped, truncated = vocabulary.encode_review(review, max_length)
        counts["total_tokens"] += len(review)
        counts["dropped_tokens"] += dropped
        counts["truncated_tokens"] += truncated
        if not ids.size:
            counts["empty_reviews"] += 1
            continue
        yield index, ids


def table_for_reviews(vectors, reviews, source):
    """Build a vocabulary of the words of `reviews` that have vectors, and its embedding table.

    Returns:
      (Vocabulary, <float32>[len(vocabulary), vector size]).

    Raises:
      EmbeddingsError: none of the words has a vector.
    """
    vocabulary = Vocabulary.from_reviews([reviews], lambda word: word in vectors.key_to_index)
    return vocabulary, build_table(vocabulary, vectors, str(source))


def evaluate_archives(trained, paths, batch_size, parallel=None, on_scored=None, vectors=None, vectors_source=None):
    """Score a trained model on one or more archives, streamed one after another, and compute metrics.

    The archives are treated as one test set: accuracy, the confusion matrix and per-category
    accuracy cover the reviews of all of them. Empty reviews are skipped and counted.

    Args:
      trained: a `model_io.TrainedModel`.
      paths: archive paths; the same path may occur several times.
      batch_size: rows per batch before rounding up to a multiple of the device count.
      parallel: a `DataParallel`; None uses all devices.
      on_scored: None, or a function called after each archive as on_scored(archive, review_indices
        <int64>[num_scored], log_probs <float32>[num_scored, num_classes]), rows in archive order.
        Collecting these rows costs memory in proportion to one archive, as the archive itself does.
      vectors: gensim `KeyedVectors` to use in place of the checkpoint's table, see
        `model_io.load_matching_vectors`; each archive gets a vocabulary and table of its own words.
      vectors_source: the vector file, for messages.

    Returns:
      A JSON-ready metrics dict, see `metrics.classification_metrics`, with the counts of skipped
      reviews and dropped tokens and the scoring throughput.
    """
    parallel = parallel or DataParallel()
    config = trained.metadata.get("config", {})
    params = parallel.replicate(trained.params)
    vocabulary, table = trained.vocabulary, parallel.replicate(trained.table)
    accumulator = MetricsAccumulator(trained.metadata["model"].get("num_classes", 2))
    counts = dict(total_tokens=0, dropped_tokens=0, truncated_tokens=0, empty_reviews=0)
    scored_seconds = 0.0
    logger.info("scoring on %s", parallel.describe())

    for path in paths:
        archive = load_archive(path)
        if trained.metadata.get("category_names"):
            check_same_categories(trained.training_archive_stub(), archive)
        if vectors is not None:
            vocabulary, archive_table = table_for_reviews(vectors, archive.reviews, vectors_source)
            table = parallel.replicate(archive_table)
        before = dict(counts)
        started = time.perf_counter()
        sequences = encode_stream(vocabulary, archive.reviews, config.get("max_length"), counts)
        batches = stream_batches(sequences, batch_size, config.get("max_batch_tokens"), config.get("min_bucket", 32),
                                 config.get("bucket_growth", 2.0), parallel.num_devices)
        predict, scored_table = scoring_table(trained.predict, params, table,
                                              sum(len(review) for review in archive.reviews))
        scored = []
        for indices, log_probs in score_batches(predict, params, scored_table, batches, parallel):
            accumulator.update(archive.labels[indices], log_probs.argmax(axis=1), archive.categories[indices],
                               archive.category_names)
            if on_scored is not None:
                scored.append((indices, log_probs))
        scored_seconds += time.perf_counter() - started
        if on_scored is not None and scored:
            indices = np.concatenate([indices for indices, _ in scored])
            order = np.argsort(indices)
            on_scored(archive, indices[order], np.concatenate([log_probs for _, log_probs in scored])[order])

        added = {key: counts[key] - before[key] for key in counts}
        logger.info("%s: %s", archive.path, encoding_summary(**added))
        if added["empty_reviews"] == len(archive):
            raise ConfigError(f"{archive.path}: no review contains a word of the checkpoint's vocabulary.")
        # Free this archive before the next one is read.
        del archive, sequences, batches, scored

    metrics = accumulator.result()
    metrics["skipped_empty_reviews"] = counts["empty_reviews"]
    metrics["dropped_tokens"] = counts["dropped_tokens"]
    metrics["total_tokens"] = counts["total_tokens"]
    metrics["reviews_per_second"] = metrics["num_reviews"] / max(scored_seconds, 1e-9)
    metrics["num_devices"] = parallel.num_devices
    return metrics
