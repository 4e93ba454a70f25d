"""Interrupted training resumes to exactly the state of an uninterrupted run.

Every run here trains on the debug archive with `small_runs` settings: 24 reviews in batches of 4, so
6 steps per epoch and 12 steps for the 2 epochs of a full run.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import gru_jax.evaluate
from conftest import TEST_3, TRAIN_3
from gru_jax import training
from gru_jax.checkpoints import PARTIAL_SAVE_MARKER, CheckpointStore
from gru_jax.experiment import run_training
from gru_jax.model_io import load_trained_model
from gru_jax.training import Interrupted
from small_runs import small_cli_args, small_config, write_vectors

STEPS_PER_EPOCH = 6
TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    return write_vectors(tmp_path_factory.mktemp("vectors") / "vectors.txt")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, vectors):
    """Two epochs without a stop: the output directory and metrics every resumed run must match."""
    output_dir = tmp_path_factory.mktemp("straight") / "run"
    metrics = run_training(small_config(output_dir, vectors))
    assert metrics["steps"] == TOTAL_STEPS
    return output_dir, metrics


def latest_checkpoint(output_dir):
    return CheckpointStore(output_dir / "checkpoints", create=False).restore()


def assert_same_final_state(output_dir, expected_dir):
    """Check that params and optimizer state of the two runs' latest checkpoints are bitwise equal."""
    actual = latest_checkpoint(output_dir)
    expected = latest_checkpoint(expected_dir)
    assert actual["step"] == expected["step"]
    actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual["state"])
    expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected["state"])
    assert actual_tree == expected_tree
    assert len(actual_leaves) > 0
    for (path, value), (_, expected_value) in zip(actual_leaves, expected_leaves):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected_value),
                                      err_msg=jax.tree_util.keystr(path))


def complete_steps(checkpoint_dir):
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(path.name) for path in checkpoint_dir.iterdir() if path.name.isdigit())


def partial_saves(checkpoint_dir):
    if not checkpoint_dir.is_dir():
        return []
    return [path for path in checkpoint_dir.iterdir() if PARTIAL_SAVE_MARKER in path.name]


def start_training(args, cache_dir):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir))
    return subprocess.Popen([sys.executable, "-m", "gru_jax.train", "--no-progress", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=300):
    """Poll `condition()` until it holds; fail if `process` exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"training exited with {process.returncode} before it could be stopped:\n{stderr}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"condition not reached within {timeout} s")


def signal_at_step(signum, stop_step):
    """Wrap make_train_step so that the process sends itself `signum` right after step `stop_step`."""
    make_train_step = training.make_train_step

    def make_signalling_train_step(model, optimizer):
        train_step = make_train_step(model, optimizer)
        steps_run = [0]

        def signalling_train_step(*args):
            result = train_step(*args)
            steps_run[0] += 1
            if steps_run[0] == stop_step:
                os.kill(os.getpid(), signum)
            return result

        return signalling_train_step

    return make_signalling_train_step


def test_one_epoch_then_resume_matches_straight_run(tmp_path, vectors):
    output_dir = tmp_path / "run"

    # A cosine schedule's length depends on the number of epochs, so a run extended from 1 to 2
    # epochs equals a straight 2-epoch run only with a constant learning rate.
    straight_dir = tmp_path / "straight"
    straight_metrics = run_training(small_config(straight_dir, vectors, epochs=2, lr_schedule="constant"))
    first = run_training(small_config(output_dir, vectors, epochs=1, lr_schedule="constant"))
    assert first["steps"] == STEPS_PER_EPOCH
    resumed = run_training(small_config(output_dir, vectors, epochs=2, lr_schedule="constant"), resume=True)

    assert resumed["steps"] == TOTAL_STEPS
    assert resumed["epochs"] == 2
    assert resumed["epoch_losses"] == straight_metrics["epoch_losses"]
    assert_same_final_state(output_dir, straight_dir)


@pytest.mark.parametrize("signum, stop_step", [(signal.SIGINT, 3), (signal.SIGTERM, 8)])
def test_signal_mid_epoch_then_resume(tmp_path, monkeypatch, vectors, straight_run, signum, stop_step):
    straight_dir, straight_metrics = straight_run
    output_dir = tmp_path / "run"
    config = small_config(output_dir, vectors)
    monkeypatch.setattr(training, "make_train_step", signal_at_step(signum, stop_step))

    with pytest.raises(Interrupted) as stopped:
        run_training(config)

    assert stopped.value.signal_name == signal.Signals(signum).name
    assert stopped.value.checkpoint == output_dir.absolute() / "checkpoints" / str(stop_step)
    progress = CheckpointStore(output_dir / "checkpoints", create=False).read_metadata()["progress"]
    assert progress["step"] == stop_step
    assert progress["epoch"] == stop_step // STEPS_PER_EPOCH
    assert progress["batch_in_epoch"] == stop_step % STEPS_PER_EPOCH
    assert not (output_dir / "metrics.json").exists()

    monkeypatch.undo()
    resumed = run_training(config, resume=True)

    assert resumed["steps"] == TOTAL_STEPS
    assert resumed["epoch_losses"] == straight_metrics["epoch_losses"]
    assert_same_final_state(output_dir, straight_dir)


def test_sigint_to_cli_saves_and_exits_130(tmp_path, vectors):
    output_dir = tmp_path / "run"
    checkpoint_dir = output_dir / "checkpoints"
    process = start_training(small_cli_args(output_dir, vectors, checkpoint_every=1), tmp_path / "cache")

    wait_for(lambda: len(complete_steps(checkpoint_dir)) >= 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    stopped_at = max(complete_steps(checkpoint_dir))
    assert stopped_at < TOTAL_STEPS
    assert last_line == (f"training stopped by SIGINT; checkpoint saved to {checkpoint_dir.absolute() / str(stopped_at)}. "
                         "Continue with the same command and --resume.")
    progress = CheckpointStore(checkpoint_dir, create=False).read_metadata()["progress"]
    assert progress["step"] == stopped_at
    assert not progress["finished"]


def test_sigterm_before_training_exits_143(tmp_path):
    output_dir = tmp_path / "run"
    cache_dir = tmp_path / "word2vec-cache"
    # In-corpus word2vec with this many epochs runs far longer than the test waits.
    settings = tmp_path / "slow.toml"
    settings.write_text("word2vec_epochs = 100000\nword2vec_size = 16\n")
    args = ["--config", str(settings), "--train-data", str(TRAIN_3), "--test-data", "", "--output-dir",
            str(output_dir), "--cache-dir", str(cache_dir)]
    process = start_training(args, tmp_path / "cache")

    while "training word2vec" not in (line := process.stderr.readline()):
        assert line, "training exited before word2vec started"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted by SIGTERM before the command finished."
    assert not output_dir.exists()
    assert list(cache_dir.glob("*")) == []


def test_sigkill_mid_save_then_resume(tmp_path, vectors, straight_run):
    straight_dir, _ = straight_run
    output_dir = tmp_path / "run"
    checkpoint_dir = output_dir / "checkpoints"
    args = small_cli_args(output_dir, vectors, checkpoint_every=1)
    process = start_training(args, tmp_path / "cache")

    # Kill as soon as a save after the first complete one has begun, which usually leaves it partial.
    wait_for(lambda: complete_steps(checkpoint_dir) and partial_saves(checkpoint_dir), process)
    process.kill()
    process.communicate(timeout=60)

    assert process.returncode == -signal.SIGKILL
    steps = complete_steps(checkpoint_dir)
    assert 1 <= steps[-1] < TOTAL_STEPS
    # Whatever the kill left, add a save of the next step that stopped halfway, as orbax leaves it.
    partial = checkpoint_dir / f"{steps[-1] + 1}{PARTIAL_SAVE_MARKER}-1700000000"
    if not partial.exists():
        shutil.copytree(checkpoint_dir / str(steps[-1]), partial)
        shutil.rmtree(partial / "metadata")
    reader = CheckpointStore(checkpoint_dir, create=False)
    assert reader.latest_step() == steps[-1]
    assert reader.read_metadata()["progress"]["step"] == steps[-1]

    resumed = subprocess.run([sys.executable, "-m", "gru_jax.train", "--no-progress", *args, "--resume"],
                             env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")),
                             capture_output=True, text=True, timeout=300)

    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {steps[-1]}" in resumed.stderr
    assert partial_saves(checkpoint_dir) == []
    assert complete_steps(checkpoint_dir)[-1] == TOTAL_STEPS
    assert_same_final_state(output_dir, straight_dir)
    trained = load_trained_model(output_dir)
    assert trained.path == checkpoint_dir.absolute() / str(TOTAL_STEPS)
    assert gru_jax.evaluate.main(["--checkpoint", str(output_dir), "--data", str(TEST_3)]) == 0
