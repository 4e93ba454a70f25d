"""The nn.scan layer and the chunked layer compute the same classifier, forwards and backwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_jax.classifier import SentimentClassifier

# Two float32 implementations of the same steps: the same bound as the PyTorch parity tests.
RTOL = 1e-5
ATOL = 1e-6


def nll(model, params, inputs, lengths, labels):
    log_probs = model.apply(params, inputs, lengths)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


@pytest.mark.parametrize("cell,num_layers", [("gru", 2), ("pmgru", 1), ("pmgru", 2)])
def test_scan_loop_matches_chunked_loop(cell, num_layers):
    inputs = jax.random.normal(jax.random.key(3), (5, 37, 7))
    lengths = jnp.array([37, 1, 16, 17, 30])
    labels = jnp.array([0, 1, 1, 0, 1])
    chunked = SentimentClassifier(cell, hidden_size=9, num_layers=num_layers, loop="chunked")
    scanned = SentimentClassifier(cell, hidden_size=9, num_layers=num_layers, loop="scan")
    params = chunked.init(jax.random.key(0), inputs, lengths)
    scan_params = scanned.init(jax.random.key(0), inputs, lengths)

    assert jax.tree.structure(params) == jax.tree.structure(scan_params)
    np.testing.assert_allclose(scanned.apply(params, inputs, lengths), chunked.apply(params, inputs, lengths),
                               rtol=RTOL, atol=ATOL)
    chunked_grads = jax.grad(lambda p: nll(chunked, p, inputs, lengths, labels))(params)
    scanned_grads = jax.grad(lambda p: nll(scanned, p, inputs, lengths, labels))(params)
    for chunked_leaf, scanned_leaf in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(scanned_grads)):
        np.testing.assert_allclose(scanned_leaf, chunked_leaf, rtol=RTOL, atol=ATOL)
