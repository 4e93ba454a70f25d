"""Train and evaluate on one device and on all devices, and print what differs as JSON.

`test_data_parallel.py` runs this file in a subprocess with XLA_FLAGS set to force several CPU
devices, which has to happen before JAX is imported. Usage: multi_device_worker.py WORK_DIR CACHE_DIR
"""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

from conftest import TEST_3, TRAIN_3
from gru_jax.config import make_config
from gru_jax.experiment import model_metadata
from gru_jax.model_io import load_trained_model
from gru_jax.parallel import DataParallel
from gru_jax.pipeline import prepare_data
from gru_jax.scoring import evaluate_archives
from gru_jax.training import Trainer, evaluate_encoded, make_predict


def max_abs_difference(tree_a, tree_b):
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), tree_a, tree_b)
    return max(jax.tree.leaves(differences))


def run_on(devices, cell, data, config, work_dir, test_subsets):
    """Train one epoch on `devices`, then evaluate in memory and streamed; return what the checks compare."""
    parallel = DataParallel(devices)
    config = dataclasses.replace(config, cell=cell)
    trainer = Trainer(config, data, work_dir / f"{cell}-{len(devices)}", model_metadata(config, data),
                      parallel=parallel)
    fit = trainer.fit()
    predict = make_predict(trainer.model)

    evaluations = {}
    for name, encoded in test_subsets.items():
        metrics, log_probs = evaluate_encoded(predict, fit.params, trainer.table, encoded, data.test,
                                              config.eval_batch_size, config.max_batch_tokens, parallel)
        evaluations[name] = {"metrics": metrics, "log_probs": log_probs}

    trained = load_trained_model(fit.checkpoint_dir)
    streamed = evaluate_archives(trained, [TEST_3, TEST_3], config.eval_batch_size, parallel)
    return {
        "params": jax.tree.map(np.asarray, fit.params),
        "losses": [loss for _, loss in fit.progress.loss_history],
        "shapes": trainer.batcher.shapes,
        "evaluations": evaluations,
        "streamed": streamed,
        "checkpoint": str(fit.checkpoint_dir),
    }


def main(work_dir, cache_dir):
    work_dir = Path(work_dir)
    config = make_config(None, dict(
        train_data=str(TRAIN_3), test_data=str(TEST_3), hidden_size=8, epochs=1, batch_size=5,
        learning_rate=0.05, eval_batch_size=7, max_length=60, word2vec_size=16, word2vec_epochs=2, log_every=1,
        cache_dir=str(cache_dir),
    ))
    data = prepare_data(config)
    # 23 reviews: a test set whose size the device count does not divide.
    encoded = data.test_encoded
    test_subsets = {
        "all": encoded,
        "odd": dataclasses.replace(encoded, token_ids=encoded.token_ids[:23], review_indices=encoded.review_indices[:23]),
    }

    report = {"num_devices": jax.device_count(), "cells": {}}
    for cell in ("gru", "pmgru"):
        one = run_on(jax.devices()[:1], cell, data, config, work_dir, test_subsets)
        every = run_on(jax.devices(), cell, data, config, work_dir, test_subsets)
        report["cells"][cell] = {
            "param_max_abs_difference": max_abs_difference(one["params"], every["params"]),
            "param_max_abs": max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(one["params"])),
            "losses": [one["losses"], every["losses"]],
            "shapes": [one["shapes"], every["shapes"]],
            "metrics": {name: [one["evaluations"][name]["metrics"], every["evaluations"][name]["metrics"]]
                        for name in test_subsets},
            "log_probs_max_abs_difference": {
                name: float(np.max(np.abs(one["evaluations"][name]["log_probs"] - every["evaluations"][name]["log_probs"])))
                for name in test_subsets
            },
            "streamed": [one["streamed"], every["streamed"]],
            "checkpoints": [one["checkpoint"], every["checkpoint"]],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
