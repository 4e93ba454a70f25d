"""Streaming batches, metric accumulation and evaluation of several archives."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_3, TRAIN_3
from gru_jax.batching import BucketedBatcher, stream_batches
from gru_jax.metrics import MetricsAccumulator, classification_metrics
from gru_jax.vocab import Vocabulary

SOURCE_DIR = Path(__file__).resolve().parents[1] / "src"


def sequences_of(lengths):
    return [(index, np.arange(1, 1 + length, dtype=np.int32)) for index, length in enumerate(lengths)]


def test_stream_batches_cover_each_sequence_once():
    lengths = [3, 40, 5, 7, 9, 50, 2, 33, 100, 1, 31]
    batches = list(stream_batches(sequences_of(lengths), batch_size=3))
    seen = np.concatenate([batch.indices[batch.indices >= 0] for batch in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in batches:
        real = batch.indices >= 0
        assert batch.token_ids.shape[0] == 3
        np.testing.assert_array_equal(batch.lengths[real], np.asarray(lengths)[batch.indices[real]])
        assert (batch.weights[~real] == 0).all()
        assert (batch.lengths[~real] == 1).all()


def test_stream_batches_shapes_match_bucketed_batcher():
    lengths = [3, 40, 5, 7, 9, 50, 2, 33, 100, 1, 31, 250]
    token_ids = [ids for _, ids in sequences_of(lengths)]
    batcher = BucketedBatcher(token_ids, np.zeros(len(lengths), np.int32), batch_size=4, max_batch_tokens=300,
                              row_multiple=4)
    streamed = {batch.token_ids.shape for batch in stream_batches(sequences_of(lengths), 4, 300, row_multiple=4)}
    assert streamed == set(batcher.shapes)


def test_stream_batches_yield_before_input_ends():
    consumed = itertools.count()

    def endless_sequences():
        for index in itertools.count():
            next(consumed)
            yield index, np.ones(1 + index % 60, dtype=np.int32)

    first = next(stream_batches(endless_sequences(), batch_size=8))
    # Two buckets (32 and 64) fill in turn, so a full batch needs at most 2 * 8 sequences.
    assert first.num_real == 8
    assert next(consumed) <= 16


def test_stream_batches_rows_multiple_of_devices():
    batches = list(stream_batches(sequences_of([3, 4, 5, 6, 7]), batch_size=3, row_multiple=4))
    assert [batch.token_ids.shape[0] for batch in batches] == [4, 4]
    assert [batch.num_real for batch in batches] == [3, 2]


def test_accumulator_matches_classification_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 101)
    predictions = rng.integers(0, 2, 101)
    categories = rng.integers(0, 3, 101)
    names = ("books", "dvd", "electronics")
    accumulator = MetricsAccumulator()
    for start in range(0, 101, 17):
        part = slice(start, start + 17)
        accumulator.update(labels[part], predictions[part], categories[part], names)
    assert accumulator.result() == classification_metrics(labels, predictions, categories, names)


def test_encode_review_matches_encode():
    vocabulary = Vocabulary(["a", "b", "c"])
    reviews = [["a", "x", "b", "c"], ["x"], ["c", "c", "c", "c"]]
    encoded = vocabulary.encode(reviews, max_length=2)
    ids, dropped, truncated = vocabulary.encode_review(reviews[0], max_length=2)
    np.testing.assert_array_equal(ids, encoded.token_ids[0])
    assert (dropped, truncated) == (1, 1)
    assert vocabulary.encode_review(reviews[1])[0].size == 0
    assert encoded.dropped_tokens == 2
    assert encoded.truncated_tokens == 3


def run_module(module, *args, cwd, cache_dir):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_DIR), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_evaluate_several_archives_as_one_test_set(tmp_path):
    output_dir = tmp_path / "run"
    trained = run_module("gru_jax.train", "--cell", "pmgru", "--train-data", str(TRAIN_3), "--test-data", str(TEST_3),
                         "--output-dir", str(output_dir), "--epochs", "1", "--batch-size", "4", "--hidden-size", "6",
                         "--no-progress", cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr
    once = json.loads((output_dir / "metrics.json").read_text())["test"]

    evaluated = run_module("gru_jax.evaluate", "--checkpoint", str(output_dir), "--data", str(TEST_3), str(TEST_3),
                           str(TEST_3), "--batch-size", "5", "--output", str(tmp_path / "eval.json"),
                           cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "on 3 archives" in evaluated.stdout
    thrice = json.loads((tmp_path / "eval.json").read_text())
    assert thrice["data"] == [str(TEST_3)] * 3
    assert thrice["num_reviews"] == 3 * once["num_reviews"]
    assert thrice["accuracy"] == pytest.approx(once["accuracy"])
    assert thrice["confusion_matrix"] == (3 * np.asarray(once["confusion_matrix"])).tolist()
    for name, result in once["per_category"].items():
        assert thrice["per_category"][name]["num_reviews"] == 3 * result["num_reviews"]
