"""One training run from a config: output directory, data, training, test metrics and files."""

import json
import logging
import shutil
import time
from pathlib import Path

import jax

from gru_jax.config import TrainConfig
from gru_jax.errors import ConfigError
from gru_jax.pipeline import prepare_data
from gru_jax.reports import plot_loss_curves, write_json
from gru_jax.training import Trainer, evaluate_encoded, make_predict

logger = logging.getLogger(__name__)

# Settings that may change when a run is resumed; any other difference means a different run.
RESUMABLE_KEYS = {"epochs", "log_every", "checkpoint_every", "output_dir", "eval_batch_size", "cache_dir"}


def resolve_output_dir(config):
    return Path(config.output_dir.format(cell=config.cell))


def check_output_dir(config, output_dir, resume, overwrite):
    """Decide what to do with the run already in `output_dir`, without changing anything there.

    An existing run is continued with `resume`, replaced with `overwrite`, and otherwise replaced only
    when it finished with the same settings, because a rerun then recreates it exactly.

    Returns:
      'new' (no earlier run), 'resume', or 'replace' (call `clear_output_dir` before training).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other. Pass one of them.")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{output_dir}: is a file, expected a directory for the run. Choose another --output-dir.")
    config_path = output_dir / "config.json"
    checkpoint_dir = output_dir / "checkpoints"
    if not config_path.exists() and not checkpoint_dir.exists():
        if resume:
            logger.warning("%s: holds no run to resume; starting a new one", output_dir)
        return "new"
    if overwrite:
        logger.info("%s: the earlier run will be replaced (--overwrite)", output_dir)
        return "replace"

    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        saved = None
    current = config.to_dict()
    if saved is None:
        raise ConfigError(
            f"{output_dir}: holds checkpoints without a readable config.json. Pass --overwrite to replace "
            "them or choose another --output-dir."
        )
    # Runs from before the sort_pool setting existed cut batches as sort_pool = 1 does.
    saved.setdefault("sort_pool", 1)
    differing = sorted(key for key in set(saved) | set(current)
                       if saved.get(key) != current.get(key) and key not in RESUMABLE_KEYS)
    if differing:
        key = differing[0]
        raise ConfigError(
            f"{output_dir}: holds a different run ({key} = {saved.get(key)!r} there, {current.get(key)!r} now). "
            "Pass --overwrite to replace it, or choose another --output-dir."
        )
    if resume:
        if current["lr_schedule"] == "cosine" and saved.get("epochs") != current["epochs"]:
            logger.warning(
                "%s: epochs changed from %s to %s, so the cosine learning-rate schedule is stretched from here "
                "on; the result differs from a run started with %s epochs",
                output_dir, saved.get("epochs"), current["epochs"], current["epochs"],
            )
        return "resume"
    if not (output_dir / "metrics.json").exists():
        raise ConfigError(
            f"{output_dir}: holds an unfinished run with these settings. Pass --resume to continue it or "
            "--overwrite to start again."
        )
    logger.info("%s: the finished run with identical settings will be replaced", output_dir)
    return "replace"


def clear_output_dir(output_dir):
    """Delete the checkpoints and result files of the run in `output_dir`."""
    logger.info("%s: removing the earlier run", output_dir)
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    for name in ("config.json", "metrics.json", "loss.png"):
        (output_dir / name).unlink(missing_ok=True)


def model_metadata(config, data):
    return {
        "model": {
            "cell": config.cell,
            "hidden_size": config.hidden_size,
            "num_layers": config.resolved_num_layers(),
            "input_size": data.input_size,
            "num_classes": 2,
        },
        "vocabulary": list(data.vocabulary.words),
        "embeddings_source": data.embeddings_source,
        "num_train_reviews": len(data.train_encoded.token_ids),
        "category_names": list(data.train.category_names),
        "config": config.to_dict(),
    }


def run_training(config: TrainConfig, resume=False, overwrite=False, progress_bar=False):
    """Train, evaluate on the test archive and write config.json, checkpoints/, metrics.json and loss.png.

    Returns:
      The metrics dict that was written to metrics.json.
    """
    output_dir = resolve_output_dir(config)
    action = check_output_dir(config, output_dir, resume, overwrite)

    started = time.perf_counter()
    data = prepare_data(config)
    prepare_seconds = time.perf_counter() - started

    # Only now that every input has been read and checked may an earlier run be removed.
    if action == "replace":
        clear_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "config.json", config.to_dict())

    trainer = Trainer(config, data, output_dir / "checkpoints", model_metadata(config, data), progress_bar)
    result = trainer.fit(resume=action == "resume")
    progress = result.progress

    metrics = {
        "cell": config.cell,
        "num_layers": config.resolved_num_layers(),
        "hidden_size": config.hidden_size,
        "num_parameters": int(sum(x.size for x in jax.tree.leaves(result.params))),
        "steps": progress.step,
        "epochs": progress.epoch,
        "epoch_losses": progress.epoch_losses,
        "train_seconds": progress.train_seconds,
        "train_reviews_per_second": len(data.train_encoded.token_ids) * progress.epoch / max(progress.train_seconds, 1e-9),
        "data_preparation_seconds": prepare_seconds,
        "checkpoint": str(result.checkpoint_dir / str(progress.step)),
        "train_skipped_empty_reviews": data.train_encoded.empty_reviews,
        "train_dropped_tokens": data.train_encoded.dropped_tokens,
        "train_total_tokens": data.train_encoded.total_tokens,
    }
    if data.test is not None:
        predict = make_predict(trainer.model)
        test_metrics, _ = evaluate_encoded(predict, result.params, trainer.table, data.test_encoded, data.test,
                                           config.eval_batch_size, config.max_batch_tokens, trainer.parallel)
        metrics["test_data"] = str(data.test.path)
        metrics["test"] = test_metrics
    write_json(output_dir / "metrics.json", metrics)
    plot_loss_curves({config.cell: progress.loss_history}, output_dir / "loss.png",
                     title=f"{config.cell} training loss")
    return metrics
