"""Data-parallel training and evaluation on 4 CPU devices against the same on 1 device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_3
from gru_jax.batching import BucketedBatcher, round_up_rows
from gru_jax.model_io import load_trained_model
from gru_jax.parallel import DataParallel
from gru_jax.scoring import evaluate_archives

REPO = Path(__file__).resolve().parents[1]
NUM_DEVICES = 4


@pytest.fixture(scope="module")
def four_device_report(tmp_path_factory):
    """Run multi_device_worker.py with 4 forced CPU devices; XLA_FLAGS only acts before JAX starts."""
    work_dir = tmp_path_factory.mktemp("multi-device")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    finished = subprocess.run(
        [sys.executable, str(REPO / "tests" / "multi_device_worker.py"), str(work_dir / "runs"), str(work_dir / "cache")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    return json.loads(finished.stdout)


def test_worker_sees_four_devices(four_device_report):
    assert four_device_report["num_devices"] == NUM_DEVICES


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_one_epoch_same_params_on_four_devices(four_device_report, cell):
    result = four_device_report["cells"][cell]
    assert result["param_max_abs"] > 0.01
    assert result["param_max_abs_difference"] < 1e-5
    one, four = result["losses"]
    np.testing.assert_allclose(four, one, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_batches_padded_to_device_multiple(four_device_report, cell):
    one, four = four_device_report["cells"][cell]["shapes"]
    assert [rows for rows, _ in one] == [5] * len(one)
    assert [rows for rows, _ in four] == [8] * len(four)
    assert [length for _, length in one] == [length for _, length in four]


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
@pytest.mark.parametrize("subset, num_reviews", [("all", 24), ("odd", 23)])
def test_evaluation_same_on_four_devices(four_device_report, cell, subset, num_reviews):
    result = four_device_report["cells"][cell]
    one, four = result["metrics"][subset]
    assert one["num_reviews"] == num_reviews
    assert four == one
    assert result["log_probs_max_abs_difference"][subset] < 1e-5


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_streamed_evaluation_same_on_four_devices(four_device_report, cell):
    result = four_device_report["cells"][cell]
    one, four = result["streamed"]
    in_memory = result["metrics"]["all"][0]
    assert one["num_devices"] == 1
    assert four["num_devices"] == NUM_DEVICES
    for key in ("num_reviews", "accuracy", "confusion_matrix", "per_category"):
        assert four[key] == one[key], key
    # The worker streams the test archive twice: every count doubles, accuracy stays.
    assert one["num_reviews"] == 2 * in_memory["num_reviews"]
    assert one["confusion_matrix"] == (2 * np.asarray(in_memory["confusion_matrix"])).tolist()
    assert one["accuracy"] == in_memory["accuracy"]


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_four_device_checkpoint_loads_on_one(four_device_report, cell):
    # This process has one device; orbax would put the arrays back on the 4 devices they were saved from.
    result = four_device_report["cells"][cell]
    trained = load_trained_model(result["checkpoints"][1])
    metrics = evaluate_archives(trained, [TEST_3, TEST_3], batch_size=7)
    assert metrics["num_devices"] == 1
    for key in ("num_reviews", "accuracy", "confusion_matrix", "per_category"):
        assert metrics[key] == result["streamed"][1][key], key


def test_single_device_leaves_batches_alone():
    parallel = DataParallel()
    arrays = (np.zeros((3, 5), np.int32), np.ones(3, np.int32))
    assert parallel.num_devices == 1
    assert not parallel.is_parallel
    assert parallel.split_batch(arrays) is arrays


def test_batcher_row_multiple_keeps_sequences_per_batch():
    token_ids = [np.arange(1, 1 + length, dtype=np.int32) for length in (3, 40, 5, 7, 9, 50, 2)]
    labels = np.zeros(len(token_ids), np.int32)
    plain = BucketedBatcher(token_ids, labels, batch_size=3)
    padded = BucketedBatcher(token_ids, labels, batch_size=3, row_multiple=4)
    plain_batches = list(plain.batches(np.random.default_rng(0)))
    padded_batches = list(padded.batches(np.random.default_rng(0)))
    assert len(plain_batches) == len(padded_batches)
    for before, after in zip(plain_batches, padded_batches):
        assert after.token_ids.shape[0] == 4
        assert after.num_real == before.num_real
        np.testing.assert_array_equal(after.indices[: before.indices.size], before.indices)
        assert (after.indices[before.indices.size:] == -1).all()
        assert (after.weights[before.indices.size:] == 0).all()


@pytest.mark.parametrize("rows, multiple, expected", [(5, 4, 8), (8, 4, 8), (1, 4, 4), (7, 1, 7)])
def test_round_up_rows(rows, multiple, expected):
    assert round_up_rows(rows, multiple) == expected


def test_distributed_without_coordinator_message(tmp_path):
    # A subprocess, because jax.distributed.initialize must come before JAX starts its backends.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    finished = subprocess.run([sys.executable, "-m", "gru_jax.evaluate", "--checkpoint", str(tmp_path),
                               "--num-processes", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert "jax.distributed.initialize failed" in finished.stderr
    assert "--coordinator-address" in finished.stderr
