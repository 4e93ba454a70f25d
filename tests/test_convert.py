"""Moving trained models between PyTorch and gru_jax with the convert and evaluate commands."""

import csv

import numpy as np
import pytest
import torch

from conftest import TEST_3, TRAIN_3
from gru_jax import convert, evaluate, train
from gru_jax.config import make_config
from gru_jax.pipeline import prepare_data
from torch_reference import TorchGRUClassifier, TorchPmGRUClassifier, forward_each

# One float32 forward pass in each framework; the same bound as the parity tests.
RTOL = 1e-5
ATOL = 1e-6


def read_predictions(path):
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    indices = np.array([int(row["review"]) for row in rows])
    predictions = np.array([int(row["prediction"]) for row in rows])
    log_probs = np.array([[float(row["log_prob_0"]), float(row["log_prob_1"])] for row in rows])
    return indices, predictions, log_probs


def torch_log_probs(model, table, encoded):
    """Score each encoded review on its own with a PyTorch model, as DLStudio does."""
    lengths = [len(ids) for ids in encoded.token_ids]
    padded = np.zeros((max(lengths), len(lengths), table.shape[1]), dtype=np.float32)
    for column, ids in enumerate(encoded.token_ids):
        padded[: len(ids), column] = table[ids]
    with torch.no_grad():
        return forward_each(model, torch.from_numpy(padded), torch.tensor(lengths)).numpy()


def data_for(tmp_path, cache_dir):
    config = make_config(None, {"train_data": str(TRAIN_3), "test_data": str(TEST_3), "cache_dir": str(cache_dir),
                                "output_dir": str(tmp_path / "unused")})
    return prepare_data(config)


def torch_model(cell, input_size):
    torch.manual_seed(0)
    if cell == "gru":
        return TorchGRUClassifier(input_size, 100, num_layers=2)
    return TorchPmGRUClassifier(input_size, 100)


def train_torch_a_little(model, table, encoded, labels, steps=12):
    """A few SGD steps, one review at a time, as DLStudio trains."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for step in range(steps):
        ids = encoded.token_ids[step % len(encoded.token_ids)]
        inputs = torch.from_numpy(table[ids][:, None, :])
        loss = torch.nn.functional.nll_loss(model(inputs), torch.tensor([int(labels[step % len(labels)])]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_torch_model_scores_same_in_gru_jax(tmp_path, word2vec_cache, cell):
    data = data_for(tmp_path, word2vec_cache)
    model = torch_model(cell, data.input_size)
    train_torch_a_little(model, data.table, data.train_encoded, data.train.labels[data.train_encoded.review_indices])
    torch.save(model.state_dict(), tmp_path / "model.pt")

    status = convert.main(["from-torch", "--torch-model", str(tmp_path / "model.pt"), "--cell", cell,
                           "--output-dir", str(tmp_path / "imported"), "--train-data", str(TRAIN_3),
                           "--test-data", str(TEST_3), "--cache-dir", str(word2vec_cache)])
    assert status == 0
    status = evaluate.main(["--checkpoint", str(tmp_path / "imported"), "--predictions", str(tmp_path / "scores.csv")])
    assert status == 0

    indices, predictions, log_probs = read_predictions(tmp_path / "scores.csv")
    expected = torch_log_probs(model, data.table, data.test_encoded)
    np.testing.assert_array_equal(indices, data.test_encoded.review_indices)
    np.testing.assert_allclose(log_probs, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(predictions, expected.argmax(axis=1))
    # Reviews must get different scores, or equal predictions would show little.
    assert np.ptp(expected[:, 1]) > 1e-4


@pytest.mark.parametrize("cell", ["gru", "pmgru"])
def test_gru_jax_model_scores_same_in_torch(tmp_path, word2vec_cache, cell):
    run_dir = tmp_path / "run"
    status = train.main(["--cell", cell, "--train-data", str(TRAIN_3), "--test-data", str(TEST_3), "--epochs", "1",
                         "--batch-size", "4", "--output-dir", str(run_dir), "--cache-dir", str(word2vec_cache),
                         "--no-progress"])
    assert status == 0
    status = convert.main(["to-torch", "--checkpoint", str(run_dir), "--output", str(tmp_path / "model.pt")])
    assert status == 0
    status = evaluate.main(["--checkpoint", str(run_dir), "--predictions", str(tmp_path / "scores.csv")])
    assert status == 0

    data = data_for(tmp_path, word2vec_cache)
    model = torch_model(cell, data.input_size)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    indices, predictions, log_probs = read_predictions(tmp_path / "scores.csv")
    expected = torch_log_probs(model, data.table, data.test_encoded)
    np.testing.assert_array_equal(indices, data.test_encoded.review_indices)
    np.testing.assert_allclose(log_probs, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(predictions, expected.argmax(axis=1))


def test_from_torch_wrong_hidden_size_message(tmp_path, word2vec_cache):
    data = data_for(tmp_path, word2vec_cache)
    model = TorchGRUClassifier(data.input_size + 1, 100, num_layers=2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    status = convert.main(["from-torch", "--torch-model", str(tmp_path / "model.pt"), "--cell", "gru",
                           "--output-dir", str(tmp_path / "imported"), "--train-data", str(TRAIN_3),
                           "--test-data", str(TEST_3), "--cache-dir", str(word2vec_cache)])
    assert status == 2
    assert not (tmp_path / "imported" / "checkpoints").exists()
