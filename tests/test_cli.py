"""The command-line tools on the shipped debugging archives, run as a user would run them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TEST_3, TRAIN_3


def run_module(module, *args, cwd, cache_dir):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("cell", ["pmgru", "gru"])
def test_train_then_evaluate_on_debug_archives(tmp_path, cell):
    output_dir = tmp_path / "run"
    trained = run_module("gru_jax.train", "--cell", cell, "--train-data", str(TRAIN_3), "--test-data", str(TEST_3),
                         "--output-dir", str(output_dir), "--epochs", "2", "--batch-size", "4",
                         "--learning-rate", "0.05", cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr
    assert "accuracy" in trained.stdout
    assert "predicted negative" in trained.stdout
    assert "true positive" in trained.stdout
    for name in ("config.json", "metrics.json", "loss.png"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["cell"] == cell
    assert metrics["num_layers"] == (2 if cell == "gru" else 1)
    # 24 reviews in batches of 4 make 6 batches per epoch, plus one partial batch per extra length bucket.
    assert metrics["steps"] % 2 == 0
    assert 12 <= metrics["steps"] < 24
    assert metrics["test"]["num_reviews"] == 24
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 24
    config = json.loads((output_dir / "config.json").read_text())
    assert config["batch_size"] == 4
    assert config["cell"] == cell

    evaluated = run_module("gru_jax.evaluate", "--checkpoint", str(output_dir), "--output", str(tmp_path / "eval.json"),
                           cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["accuracy"] == metrics["test"]["accuracy"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert again["per_category"] == metrics["test"]["per_category"]


def test_config_file_and_flag_override(tmp_path):
    config_file = tmp_path / "settings.toml"
    config_file.write_text('cell = "gru"\nepochs = 1\nbatch_size = 8\nhidden_size = 12\n')
    output_dir = tmp_path / "run"
    trained = run_module("gru_jax.train", "--config", str(config_file), "--hidden-size", "7", "--train-data",
                         str(TRAIN_3), "--test-data", str(TEST_3), "--output-dir", str(output_dir),
                         cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr
    config = json.loads((output_dir / "config.json").read_text())
    assert config["cell"] == "gru"
    assert config["batch_size"] == 8
    assert config["hidden_size"] == 7


def test_rerun_compiles_nothing(tmp_path):
    """The second identical run finds every program in the persistent compilation cache."""
    cache = tmp_path / "compiled"
    args = ["--cell", "gru", "--train-data", str(TRAIN_3), "--test-data", str(TEST_3), "--epochs", "1",
            "--batch-size", "4", "--compilation-cache", str(cache)]

    first = run_module("gru_jax.train", *args, "--output-dir", str(tmp_path / "first"), cwd=tmp_path,
                       cache_dir=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    entries = sorted(path.name for path in cache.iterdir())
    second = run_module("gru_jax.train", *args, "--output-dir", str(tmp_path / "second"), cwd=tmp_path,
                        cache_dir=tmp_path / "cache")
    assert second.returncode == 0, second.stderr

    assert len(entries) > 0
    assert sorted(path.name for path in cache.iterdir()) == entries
