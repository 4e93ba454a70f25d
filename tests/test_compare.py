"""Comparing the cells: statistics, the compare command in both modes, and its report."""

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import TEST_3, TRAIN_3
from gru_jax import compare
from gru_jax.comparison import RunResult, check_runs, summarize
from gru_jax.errors import ConfigError
from gru_jax.stats import mcnemar_test, t_interval


def test_t_interval_by_hand():
    values = [0.70, 0.74, 0.72]
    result = t_interval(values)
    sd = math.sqrt(((0.70 - 0.72) ** 2 + (0.74 - 0.72) ** 2 + 0) / 2)
    half_width = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert result["mean"] == pytest.approx(0.72)
    assert result["sd"] == pytest.approx(sd)
    assert result["ci_low"] == pytest.approx(0.72 - half_width)
    assert result["ci_high"] == pytest.approx(0.72 + half_width)
    assert result["n"] == 3


def test_t_interval_single_value_has_none():
    result = t_interval([0.8])
    assert result["mean"] == 0.8
    assert result["sd"] is None
    assert result["ci_low"] is None
    assert result["ci_high"] is None


def test_mcnemar_exact_p_value():
    # 10 reviews only a gets right, 2 only b: p = 2 * P(X <= 2), X ~ Binomial(12, 0.5).
    correct_a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 5)
    correct_b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 5)
    result = mcnemar_test(correct_a, correct_b)
    assert result["only_a_correct"] == 10
    assert result["only_b_correct"] == 2
    assert result["both_correct"] == 30
    assert result["both_wrong"] == 5
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)


def test_mcnemar_no_discordant_pairs():
    correct = np.array([True, False, True])
    assert mcnemar_test(correct, correct)["p_value"] == 1.0


def fake_run(cell, seed, correct):
    correct = np.asarray(correct, dtype=bool)
    labels = np.ones(correct.size, dtype=int)
    accuracy = float(correct.mean())
    test = {"num_reviews": int(correct.size), "accuracy": accuracy,
            "confusion_matrix": [[0, 0], [int((~correct).sum()), int(correct.sum())]],
            "confusion_matrix_percent": [[0.0, 0.0], [100 * (1 - accuracy), 100 * accuracy]],
            "per_category": {"books": {"num_reviews": int(correct.size), "accuracy": accuracy}}}
    return RunResult(cell=cell, seed=seed, num_layers=1, hidden_size=4, num_parameters=10, steps=3, epochs=1,
                     train_seconds=1.0, train_reviews_per_second=5.0, loss_history=[[3, 0.5]], epoch_losses=[0.5],
                     test=test, review_indices=np.arange(labels.size), correct=correct, test_reviews_per_second=9.0,
                     checkpoint=f"{cell}-{seed}", table_digest="same")


def test_summarize_pairs_seeds_and_tests_first_seed():
    runs = [fake_run("gru", 0, [1, 1, 1, 0]), fake_run("pmgru", 0, [1, 0, 0, 0]),
            fake_run("gru", 1, [1, 1, 0, 0]), fake_run("pmgru", 1, [1, 1, 0, 0])]
    check_runs(runs)
    summary = summarize(runs, {"seeds": [0, 1]})
    assert summary["cells"]["gru"]["accuracy"]["values"] == [0.75, 0.5]
    assert summary["difference"]["cells"] == ["gru", "pmgru"]
    assert summary["difference"]["values"] == [0.5, 0.0]
    assert summary["mcnemar"]["seed"] == 0
    assert summary["mcnemar"]["only_a_correct"] == 2
    assert summary["mcnemar"]["only_b_correct"] == 0


def test_summarize_warns_single_class_run():
    runs = [fake_run("gru", 0, [1, 1, 1, 1]), fake_run("pmgru", 0, [1, 0, 0, 1])]
    warnings = summarize(runs, {"seeds": [0]})["warnings"]
    assert len(warnings) == 1
    assert warnings[0].startswith("gru seed 0 predicted positive for every test review")


def test_check_runs_needs_both_cells():
    with pytest.raises(ConfigError, match="no run of pmgru"):
        check_runs([fake_run("gru", 0, [1, 0])])


def test_check_runs_rejects_duplicate_seed():
    with pytest.raises(ConfigError, match="two runs of gru with seed 0"):
        check_runs([fake_run("gru", 0, [1, 0]), fake_run("gru", 0, [1, 1]), fake_run("pmgru", 0, [1, 1])])


def test_compare_trains_then_reloads(tmp_path, word2vec_cache, capsys):
    output_dir = tmp_path / "compare"
    status = compare.main(["--seeds", "0", "1", "--train-data", str(TRAIN_3), "--test-data", str(TEST_3),
                           "--epochs", "1", "--batch-size", "4", "--hidden-size", "6", "--max-length", "60",
                           "--output-dir", str(output_dir), "--cache-dir", str(word2vec_cache), "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| gru |" in printed
    assert "McNemar (seed 0)" in printed
    for name in ("report.md", "comparison.json"):
        assert (output_dir / name).is_file(), name
    for name in ("confusion_matrices.png", "accuracy.png", "loss_curves.png"):
        assert (output_dir / name).read_bytes()[:4] == b"\x89PNG", name

    summary = json.loads((output_dir / "comparison.json").read_text())
    runs = summary["runs"]
    assert [(run["cell"], run["seed"]) for run in runs] == [("gru", 0), ("pmgru", 0), ("gru", 1), ("pmgru", 1)]
    assert len({run["table_digest"] for run in runs}) == 1
    assert runs[0]["steps"] == runs[1]["steps"]
    assert summary["settings"]["word2vec_seed"] == 0
    assert summary["cells"]["gru"]["num_layers"] == 2
    assert summary["cells"]["pmgru"]["num_layers"] == 1
    assert summary["cells"]["gru"]["num_parameters"] > summary["cells"]["pmgru"]["num_parameters"]
    assert summary["cells"]["gru"]["accuracy"]["n"] == 2
    assert summary["mcnemar"]["num_reviews"] == 24
    report = (output_dir / "report.md").read_text()
    assert "t(0.975, n − 1)" in report
    assert "exact two-sided binomial test" in report
    assert "![confusion matrices](confusion_matrices.png)" in report

    reloaded_dir = tmp_path / "reloaded"
    status = compare.main(["--checkpoints", str(output_dir), "--output-dir", str(reloaded_dir)])
    assert status == 0
    reloaded = json.loads((reloaded_dir / "comparison.json").read_text())
    for cell in ("gru", "pmgru"):
        assert reloaded["cells"][cell]["accuracy"]["values"] == summary["cells"][cell]["accuracy"]["values"]
        assert reloaded["cells"][cell]["train_reviews_per_second"] is not None
    assert reloaded["mcnemar"]["p_value"] == summary["mcnemar"]["p_value"]


def test_compare_checkpoints_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = compare.main(["--checkpoints", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    assert status == 2
    assert "contains no checkpoint" in capsys.readouterr().err
