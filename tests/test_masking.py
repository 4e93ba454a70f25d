import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_jax.classifier import SentimentClassifier
from gru_jax.rnn import RecurrentStack

# Padding changes the shapes of the matrix products, so XLA may sum in another order: allow float32 rounding.
TOLERANCE = dict(rtol=1e-6, atol=1e-6)


def _padded(inputs, total_length, fill):
    batch, length, size = inputs.shape
    padding = jnp.full((batch, total_length - length, size), fill, inputs.dtype)
    return jnp.concatenate([inputs, padding], axis=1)


@pytest.mark.parametrize("cell,num_layers", [("gru", 2), ("pmgru", 1), ("pmgru", 2)])
def test_padding_length_does_not_matter(cell, num_layers):
    inputs = jax.random.normal(jax.random.key(1), (3, 10, 7))
    lengths = jnp.array([10, 4, 1])
    short = _padded(inputs, 10, 0.0)
    long = _padded(inputs, 50, 3.0)  # Non-zero padding: only the mask may hide it.

    stack = RecurrentStack(cell, hidden_size=6, num_layers=num_layers)
    params = stack.init(jax.random.key(0), jnp.swapaxes(short, 0, 1), jnp.ones((10, 3), bool))
    mask_short = (jnp.arange(10)[:, None] < lengths[None, :])
    mask_long = (jnp.arange(50)[:, None] < lengths[None, :])
    carry_short, outputs_short = stack.apply(params, jnp.swapaxes(short, 0, 1), mask_short)
    carry_long, outputs_long = stack.apply(params, jnp.swapaxes(long, 0, 1), mask_long)

    np.testing.assert_allclose(carry_short, carry_long, **TOLERANCE)
    np.testing.assert_allclose(outputs_short, outputs_long[:10], **TOLERANCE)
    assert not np.asarray(outputs_long[10:]).any()

    model = SentimentClassifier(cell, hidden_size=6, num_layers=num_layers)
    model_params = model.init(jax.random.key(0), short, lengths)
    np.testing.assert_allclose(model.apply(model_params, short, lengths), model.apply(model_params, long, lengths),
                               **TOLERANCE)


def test_final_carry_is_last_real_step():
    inputs = jax.random.normal(jax.random.key(2), (2, 8, 5))
    lengths = jnp.array([8, 3])
    stack = RecurrentStack("gru", hidden_size=4)
    mask = jnp.arange(8)[:, None] < lengths[None, :]
    params = stack.init(jax.random.key(0), jnp.swapaxes(inputs, 0, 1), mask)
    carry, outputs = stack.apply(params, jnp.swapaxes(inputs, 0, 1), mask)
    np.testing.assert_array_equal(carry[-1, 1], outputs[2, 1])
    np.testing.assert_array_equal(carry[-1, 0], outputs[7, 0])
