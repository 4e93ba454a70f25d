"""Comparing GRU and pmGRU fairly: both cells on the same data, word vectors and batches, over several seeds.

For a given seed both cells get the same initialization seed and the same batches in the same order,
because `Trainer` shuffles with the seed and the epoch only. Every run reads one `PreparedData`, so
the vocabulary, the word vectors and the encoded reviews are identical. Only the cell differs.
"""

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import jax
import numpy as np

from gru_jax.archives import CLASS_NAMES, load_archive
from gru_jax.cells import CELLS
from gru_jax.checkpoints import resolve
from gru_jax.errors import CheckpointError, ConfigError
from gru_jax.experiment import check_output_dir, clear_output_dir, model_metadata
from gru_jax.model_io import load_trained_model
from gru_jax.parallel import DataParallel
from gru_jax.pipeline import prepare_data
from gru_jax.reports import write_json
from gru_jax.stats import mcnemar_test, t_interval
from gru_jax.training import Trainer, evaluate_encoded, make_predict

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
SIGNIFICANCE_LEVEL = 0.05


@dataclasses.dataclass
class RunResult:
    """One trained model and its results on the comparison's test set.

    Attributes:
      cell, seed: what the run varied.
      num_layers, hidden_size, num_parameters: the model's size.
      steps, epochs: optimizer steps and finished epochs.
      train_seconds: time in the training loop, compilation included.
      train_reviews_per_second: training reviews times epochs per second of `train_seconds`; None
        when the checkpoint does not record the number of training reviews.
      loss_history: [step, mean loss since the previous entry] pairs.
      epoch_losses: mean training loss of each epoch.
      test: metrics dict, see `metrics.classification_metrics`.
      review_indices: <int64>[num_scored], archive positions of the scored test reviews.
      correct: <bool>[num_scored], whether each of those reviews was classified correctly.
      test_reviews_per_second: scoring throughput on the test set.
      checkpoint: the step directory of the final checkpoint.
      table_digest: a hash of the embedding table, equal for runs that share their word vectors.
    """

    cell: str
    seed: int
    num_layers: int
    hidden_size: int
    num_parameters: int
    steps: int
    epochs: int
    train_seconds: float
    train_reviews_per_second: float | None
    loss_history: list
    epoch_losses: list
    test: dict
    review_indices: np.ndarray
    correct: np.ndarray
    test_reviews_per_second: float
    checkpoint: str
    table_digest: str

    def to_json(self):
        """Return every field except the per-review arrays, JSON-ready."""
        values = dataclasses.asdict(self)
        del values["review_indices"], values["correct"]
        return values


def table_digest(table):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(table), dtype=np.float32).tobytes()).hexdigest()[:16]


def count_parameters(params):
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def score_run(predict, params, table, encoded, archive, batch_size, max_batch_tokens, parallel):
    """Evaluate one model on encoded test reviews.

    Returns:
      (metrics dict, review_indices <int64>[num_scored], correct <bool>[num_scored], reviews per second).
    """
    started = time.perf_counter()
    metrics, log_probs = evaluate_encoded(predict, params, table, encoded, archive, batch_size, max_batch_tokens,
                                          parallel)
    seconds = time.perf_counter() - started
    review_indices = np.asarray(encoded.review_indices)
    correct = log_probs.argmax(axis=1) == archive.labels[review_indices]
    return metrics, review_indices, correct, len(review_indices) / max(seconds, 1e-9)


def train_runs(config, seeds, output_dir, resume=False, overwrite=False, progress_bar=False, parallel=None):
    """Train and evaluate both cells for every seed, on data and word vectors prepared once.

    The word2vec seed is fixed at `config.resolved_word2vec_seed()` for all runs. Each run is written
    to `output_dir/runs/<cell>-seed<seed>/` (config.json, checkpoints/, metrics.json), which
    `load_runs` reads back.

    Args:
      config: a `TrainConfig`; its cell and seed are replaced per run.
      seeds: seeds of initialization and data order.
      resume, overwrite: for each run directory, as for `gru_jax.train`.
      parallel: a `DataParallel`; None uses all devices.

    Returns:
      (list of `RunResult`, settings dict for `summarize`).
    """
    config = dataclasses.replace(config, word2vec_seed=config.resolved_word2vec_seed())
    plan = []
    for seed in seeds:
        for cell in CELLS:
            run_dir = Path(output_dir) / "runs" / f"{cell}-seed{seed}"
            run_config = dataclasses.replace(config, cell=cell, seed=seed, output_dir=str(run_dir))
            # Check every run directory first, so that a conflict stops the comparison before any training.
            plan.append((run_config, run_dir, check_output_dir(run_config, run_dir, resume, overwrite)))

    started = time.perf_counter()
    data = prepare_data(config)
    if data.test is None:
        raise ConfigError("compare needs a test archive. Pass --test-data.")
    logger.info("prepared the data once for all runs in %.1f s", time.perf_counter() - started)
    parallel = parallel or DataParallel()

    runs, run_seconds = [], {cell: [] for cell in CELLS}
    for number, (run_config, run_dir, action) in enumerate(plan, start=1):
        cell, seed = run_config.cell, run_config.seed
        logger.info("run %d of %d: %s, seed %d", number, len(plan), cell, seed)
        run_started = time.perf_counter()

        if action == "replace":
            clear_output_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", run_config.to_dict())
        trainer = Trainer(run_config, data, run_dir / "checkpoints", model_metadata(run_config, data), progress_bar,
                          parallel)
        fit = trainer.fit(resume=action == "resume")

        metrics, review_indices, correct, test_speed = score_run(
            make_predict(trainer.model), fit.params, trainer.table, data.test_encoded, data.test,
            run_config.eval_batch_size, run_config.max_batch_tokens, parallel,
        )
        progress = fit.progress
        num_train_reviews = len(data.train_encoded.token_ids)
        result = RunResult(
            cell=cell, seed=seed, num_layers=run_config.resolved_num_layers(), hidden_size=run_config.hidden_size,
            num_parameters=count_parameters(fit.params), steps=progress.step, epochs=progress.epoch,
            train_seconds=progress.train_seconds,
            train_reviews_per_second=num_train_reviews * progress.epoch / max(progress.train_seconds, 1e-9),
            loss_history=progress.loss_history, epoch_losses=progress.epoch_losses, test=metrics,
            review_indices=review_indices, correct=correct, test_reviews_per_second=test_speed,
            checkpoint=str(fit.checkpoint_dir / str(progress.step)), table_digest=table_digest(data.table),
        )
        write_json(run_dir / "metrics.json", result.to_json())
        runs.append(result)

        run_seconds[cell].append(time.perf_counter() - run_started)
        remaining = plan[number:]
        estimate = sum(np.mean(run_seconds[next_config.cell] or run_seconds[cell]) for next_config, _, _ in remaining)
        logger.info("run %d of %d finished: accuracy %.2f%%, %.0f s; an estimated %.0f s left for %d run(s)",
                    number, len(plan), 100 * metrics["accuracy"], run_seconds[cell][-1], estimate, len(remaining))
    return runs, comparison_settings(config.to_dict(), seeds, data.test.path, data.embeddings_source)


# Config keys that differ between the runs of one comparison by design.
PER_RUN_KEYS = ("cell", "seed", "output_dir")


def comparison_settings(config, seeds, test_data, embeddings_source):
    """Return the JSON-ready settings that a comparison's runs share, from one run's config dict."""
    settings = {key: value for key, value in config.items() if key not in PER_RUN_KEYS}
    settings.update(seeds=list(seeds), test_data=str(test_data), embeddings_source=embeddings_source)
    return settings


def expand_run_paths(paths):
    """Turn --checkpoints arguments into run directories.

    Each path may be anything `checkpoints.resolve` accepts (a run's output directory, its
    checkpoints/ directory or a step directory), or a directory whose `runs/` subdirectory or whose
    own subdirectories are such runs, as `train_runs` writes them.
    """
    expanded = []
    for path in map(Path, paths):
        try:
            resolve(path)
            expanded.append(path)
            continue
        except CheckpointError:
            if not path.is_dir():
                raise
        parent = path / "runs" if (path / "runs").is_dir() else path
        found = [child for child in sorted(parent.iterdir()) if child.is_dir() and _is_run(child)]
        if not found:
            raise CheckpointError(
                f"{path}: contains no checkpoint and no run directories with checkpoints. Pass a compare output "
                "directory, or the output directories of gru_jax.train runs."
            )
        expanded.extend(found)
    return expanded


def _is_run(path):
    try:
        resolve(path)
    except CheckpointError:
        return False
    return True


def load_runs(paths, test_data=None, seeds=None, batch_size=None, parallel=None):
    """Restore trained models from checkpoints and evaluate them all on one test archive.

    Args:
      paths: --checkpoints arguments, see `expand_run_paths`.
      test_data: the test archive; None uses the first checkpoint's.
      seeds: keep only the runs with these seeds; None keeps all.
      batch_size: evaluation batch size; None uses each run's eval_batch_size.
      parallel: a `DataParallel`; None uses all devices.

    Returns:
      (list of `RunResult`, settings dict for `summarize`, taken from the first run's config).
    """
    parallel = parallel or DataParallel()
    models = [load_trained_model(path) for path in expand_run_paths(paths)]
    if seeds is not None:
        models = [trained for trained in models if trained.metadata.get("config", {}).get("seed") in seeds]
        if not models:
            raise ConfigError(f"none of the checkpoints has one of the seeds {', '.join(map(str, seeds))}.")
    configs = [trained.metadata.get("config", {}) for trained in models]
    test_data = test_data or configs[0].get("test_data")
    if not test_data:
        raise ConfigError(f"{models[0].path}: the run had no test archive. Pass --test-data.")
    for trained, config in zip(models, configs):
        if config.get("test_data") and Path(config["test_data"]) != Path(test_data):
            logger.warning("%s: was tested on %s during training; all runs are scored on %s here",
                           trained.path, config["test_data"], test_data)
        differing = sorted(key for key in set(config) | set(configs[0]) if key not in PER_RUN_KEYS + ("test_data",)
                           and config.get(key) != configs[0].get(key))
        if differing:
            logger.warning("%s: settings differ from those of %s (%s), so the runs differ in more than the cell",
                           trained.path, models[0].path, ", ".join(differing))
    archive = load_archive(test_data)

    runs = []
    for trained, config in zip(models, configs):
        encoded = trained.vocabulary.encode(archive.reviews, config.get("max_length"))
        if not encoded.token_ids:
            raise ConfigError(f"{archive.path}: no review contains a word of the vocabulary of {trained.path}.")
        metrics, review_indices, correct, test_speed = score_run(
            trained.predict, parallel.replicate(trained.params), parallel.replicate(trained.table), encoded, archive,
            batch_size or config.get("eval_batch_size", 256), config.get("max_batch_tokens"), parallel,
        )
        settings = trained.metadata["model"]
        progress = trained.metadata.get("progress", {})
        train_seconds = float(progress.get("train_seconds", 0.0))
        epochs = int(progress.get("epoch", 0))
        num_train_reviews = trained.metadata.get("num_train_reviews")
        throughput = None
        if num_train_reviews is not None and train_seconds > 0:
            throughput = num_train_reviews * epochs / train_seconds
        runs.append(RunResult(
            cell=settings["cell"], seed=int(config.get("seed", 0)), num_layers=settings["num_layers"],
            hidden_size=settings["hidden_size"], num_parameters=count_parameters(trained.params),
            steps=int(progress.get("step", 0)), epochs=epochs, train_seconds=train_seconds,
            train_reviews_per_second=throughput, loss_history=progress.get("loss_history", []),
            epoch_losses=progress.get("epoch_losses", []), test=metrics, review_indices=review_indices,
            correct=correct, test_reviews_per_second=test_speed, checkpoint=str(trained.path),
            table_digest=table_digest(trained.table),
        ))
        logger.info("%s: %s seed %d, accuracy %.2f%%", trained.path, runs[-1].cell, runs[-1].seed,
                    100 * metrics["accuracy"])
    seeds = sorted({run.seed for run in runs})
    settings = comparison_settings(configs[0], seeds, archive.path, models[0].metadata.get("embeddings_source"))
    return runs, settings


def check_runs(runs):
    """Raise ConfigError unless there are runs of both cells and no cell and seed occur twice.

    Runs that do not share their embedding table get a warning, because then the cells are not
    compared on the same inputs.
    """
    seen = {}
    for run in runs:
        key = (run.cell, run.seed)
        if key in seen:
            raise ConfigError(
                f"two runs of {run.cell} with seed {run.seed}: {seen[key]} and {run.checkpoint}. Pass only one of them."
            )
        seen[key] = run.checkpoint
    missing = [cell for cell in CELLS if not any(run.cell == cell for run in runs)]
    if missing:
        raise ConfigError(f"no run of {', '.join(missing)} among the checkpoints. Pass runs of both cells.")
    if len({run.table_digest for run in runs}) > 1:
        logger.warning("the runs use different embedding tables (other data or word vectors), so the cells are "
                       "not compared on the same inputs")


def summarize(runs, settings, confidence=CONFIDENCE, alpha=SIGNIFICANCE_LEVEL):
    """Compute the comparison's numbers: accuracy over seeds, the paired difference and McNemar's test.

    McNemar's test uses the predictions of the smallest seed that both cells have.

    Args:
      runs: `RunResult`s of both cells, checked by `check_runs`.
      settings: JSON-ready facts about the comparison, copied into the result.

    Returns:
      A JSON-ready dict with every number of the report.
    """
    cells = [cell for cell in CELLS if any(run.cell == cell for run in runs)]
    by_cell = {cell: sorted((run for run in runs if run.cell == cell), key=lambda run: run.seed) for cell in cells}
    summary = {"settings": dict(settings, confidence=confidence, alpha=alpha), "cells": {}}

    for cell, cell_runs in by_cell.items():
        categories = sorted({name for run in cell_runs for name in run.test.get("per_category", {})})
        throughputs = [run.train_reviews_per_second for run in cell_runs if run.train_reviews_per_second is not None]
        summary["cells"][cell] = {
            "seeds": [run.seed for run in cell_runs],
            "num_layers": cell_runs[0].num_layers,
            "hidden_size": cell_runs[0].hidden_size,
            "num_parameters": cell_runs[0].num_parameters,
            "accuracy": t_interval([run.test["accuracy"] for run in cell_runs], confidence),
            "per_category": {
                name: t_interval([run.test["per_category"][name]["accuracy"] for run in cell_runs
                                  if name in run.test.get("per_category", {})], confidence)
                for name in categories
            },
            "train_seconds": t_interval([run.train_seconds for run in cell_runs], confidence),
            "train_reviews_per_second": t_interval(throughputs, confidence) if throughputs else None,
            "test_reviews_per_second": t_interval([run.test_reviews_per_second for run in cell_runs], confidence),
        }

    first, second = cells[0], cells[1]
    runs_of_first = {run.seed: run for run in by_cell[first]}
    runs_of_second = {run.seed: run for run in by_cell[second]}
    paired_seeds = sorted(set(runs_of_first) & set(runs_of_second))
    if paired_seeds:
        differences = [runs_of_first[seed].test["accuracy"] - runs_of_second[seed].test["accuracy"]
                       for seed in paired_seeds]
        summary["difference"] = dict(t_interval(differences, confidence), cells=[first, second], seeds=paired_seeds)
        summary["mcnemar"] = paired_test(runs_of_first[paired_seeds[0]], runs_of_second[paired_seeds[0]], alpha)
    else:
        logger.warning("no seed was run for both cells, so there is no paired difference and no McNemar test")
        summary["difference"] = None
        summary["mcnemar"] = None
    summary["runs"] = [run.to_json() for run in sorted(runs, key=lambda run: (run.seed, cells.index(run.cell)))]
    summary["warnings"] = single_class_warnings(runs)
    for warning in summary["warnings"]:
        logger.warning("%s", warning)
    return summary


def single_class_warnings(runs):
    """Return a message for each run that predicted the same class for every test review, which
    means that its training failed; such a run still counts in the means and intervals."""
    warnings = []
    for run in sorted(runs, key=lambda run: (run.seed, run.cell)):
        predicted = np.asarray(run.test["confusion_matrix"]).sum(axis=0)
        if np.count_nonzero(predicted) != 1:
            continue
        predicted_class = int(np.argmax(predicted))
        name = CLASS_NAMES[predicted_class] if len(predicted) == len(CLASS_NAMES) else f"class {predicted_class}"
        losses = run.epoch_losses or [float("nan")]
        warnings.append(
            f"{run.cell} seed {run.seed} predicted {name} for every test review, so its training failed "
            f"(highest epoch loss {max(losses):.3f}, final {losses[-1]:.3f}). It still counts in the means and "
            "intervals."
        )
    return warnings


def paired_test(run_a, run_b, alpha=SIGNIFICANCE_LEVEL):
    """McNemar's test on the test reviews that both runs scored."""
    shared, positions_a, positions_b = np.intersect1d(run_a.review_indices, run_b.review_indices,
                                                      return_indices=True)
    if len(shared) < len(run_a.review_indices) or len(shared) < len(run_b.review_indices):
        logger.warning("McNemar's test covers the %d test reviews that both runs scored (of %d and %d)",
                       len(shared), len(run_a.review_indices), len(run_b.review_indices))
    result = mcnemar_test(run_a.correct[positions_a], run_b.correct[positions_b])
    result.update(seed=run_a.seed, cells=[run_a.cell, run_b.cell], num_reviews=int(len(shared)),
                  alpha=alpha, significant=result["p_value"] < alpha)
    return result
