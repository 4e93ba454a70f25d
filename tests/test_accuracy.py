"""Accuracy on real data: the default config on the shipped 1,600-review archives."""

import pytest

from conftest import TEST_200, TRAIN_200
from gru_jax.config import make_config
from gru_jax.experiment import run_training

# Measured with the default config and seed 0 (see README): about 74% for both cells. A model that
# did not learn would score about 50%, and a regression in the data pipeline or a cell well below 70%.
MIN_ACCURACY = 0.70


@pytest.mark.parametrize("cell", ["pmgru", "gru"])
def test_default_config_accuracy(tmp_path, word2vec_cache, cell):
    config = make_config(None, {
        "cell": cell,
        "train_data": str(TRAIN_200),
        "test_data": str(TEST_200),
        "output_dir": str(tmp_path / cell),
        "cache_dir": str(word2vec_cache),
    })
    metrics = run_training(config)
    assert metrics["test"]["num_reviews"] == 1600
    assert metrics["test"]["accuracy"] >= MIN_ACCURACY
