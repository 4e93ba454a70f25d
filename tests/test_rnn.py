"""The recurrent layer's hand-written gradient and its chunked loop, against plain JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_jax.cells import CELLS
from gru_jax.classifier import SentimentClassifier, project_table
from gru_jax.rnn import RecurrentStack

# Both sides compute the same sums in another order; float32 rounding is all that may differ.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)

TIME_STEPS = 21  # Not a multiple of the chunk length, so the layer pads it.
LENGTHS = (21, 5, 1, 16)


def reference_stack(cell, params, inputs, mask):
    """Run the stack with a Python loop over time steps, differentiated by JAX itself."""
    cell_class = CELLS[cell]
    outputs = inputs
    carries = []
    for index in range(len(params)):
        layer_params = params[f"layer_{index}"]["cell"]
        projected = cell_class.project(layer_params, outputs)
        carry = jnp.zeros((inputs.shape[1], layer_params["input_kernel"].shape[1] // (3 if cell == "gru" else 2)))
        steps = []
        for step in range(inputs.shape[0]):
            updated = cell_class.step(layer_params, carry, projected[step])[0]
            keep = mask[step][:, None]
            carry = jnp.where(keep, updated, carry)
            steps.append(jnp.where(keep, updated, 0.0))
        outputs = jnp.stack(steps)
        carries.append(carry)
    return jnp.stack(carries), outputs


def make_inputs(input_size):
    inputs = jax.random.normal(jax.random.key(3), (TIME_STEPS, len(LENGTHS), input_size))
    mask = jnp.arange(TIME_STEPS)[:, None] < jnp.array(LENGTHS)[None, :]
    return inputs, mask


@pytest.mark.parametrize("cell,num_layers", [("gru", 1), ("gru", 2), ("pmgru", 1), ("pmgru", 2)])
@pytest.mark.parametrize("chunk_length", [1, 4, 16])
def test_stack_gradients_match_autodiff(cell, num_layers, chunk_length):
    inputs, mask = make_inputs(7)
    stack = RecurrentStack(cell, hidden_size=5, num_layers=num_layers, unroll=2, chunk_length=chunk_length)
    params = stack.init(jax.random.key(0), inputs, mask)["params"]
    # Weights on every output, so that the cotangents of the per-step outputs and the final carries matter.
    output_weights = jax.random.normal(jax.random.key(4), (TIME_STEPS, len(LENGTHS), 5))
    carry_weights = jax.random.normal(jax.random.key(5), (num_layers, len(LENGTHS), 5))

    def loss(run, params, inputs):
        final_carry, outputs = run(params, inputs)
        return jnp.sum(jnp.tanh(outputs) * output_weights) + jnp.sum(final_carry * carry_weights)

    def run_stack(params, inputs):
        return stack.apply({"params": params}, inputs, mask)

    def run_reference(params, inputs):
        return reference_stack(cell, params, inputs, mask)

    value, gradients = jax.jit(jax.value_and_grad(lambda p, x: loss(run_stack, p, x), argnums=(0, 1)))(params, inputs)
    expected_value, expected = jax.value_and_grad(lambda p, x: loss(run_reference, p, x), argnums=(0, 1))(params, inputs)

    np.testing.assert_allclose(value, expected_value, **TOLERANCE)
    flat, _ = jax.tree_util.tree_flatten_with_path(gradients)
    flat_expected = jax.tree.leaves(expected)
    for (path, gradient), gradient_expected in zip(flat, flat_expected):
        np.testing.assert_allclose(gradient, gradient_expected, **TOLERANCE, err_msg=jax.tree_util.keystr(path))


def test_steps_after_longest_sequence_are_skipped():
    """NaN inputs after the chunk of the longest sequence never reach the outputs or the gradients.

    Masking alone would not keep them out of the gradients (0 times NaN is NaN), so this shows that the
    loops stop there.
    """
    inputs, mask = make_inputs(7)
    inputs = inputs.at[8:].set(jnp.nan)
    mask = mask & (jnp.arange(TIME_STEPS)[:, None] < 8)
    stack = RecurrentStack("gru", hidden_size=5, num_layers=2, chunk_length=4)
    params = stack.init(jax.random.key(0), jnp.nan_to_num(inputs), mask)

    def loss(params):
        final_carry, outputs = stack.apply(params, inputs, mask)
        return final_carry.sum() + outputs.sum()

    final_carry, outputs = stack.apply(params, inputs, mask)
    gradients = jax.grad(loss)(params)

    assert np.isfinite(np.asarray(final_carry)).all()
    assert not np.asarray(outputs[8:]).any()
    for gradient in jax.tree.leaves(gradients):
        assert np.isfinite(np.asarray(gradient)).all()


@pytest.mark.parametrize("cell,num_layers", [("gru", 2), ("pmgru", 1)])
def test_projected_table_gives_same_log_probs(cell, num_layers):
    table = jax.random.normal(jax.random.key(6), (30, 7))
    token_ids = jax.random.randint(jax.random.key(7), (4, 12), 1, 30)
    lengths = jnp.array([12, 3, 1, 7])
    model = SentimentClassifier(cell, hidden_size=5, num_layers=num_layers)
    params = model.init(jax.random.key(0), table[token_ids], lengths)

    direct = model.apply(params, table[token_ids], lengths)
    projected = project_table(params, cell, table)
    from_projected = model.apply(params, projected[token_ids], lengths, inputs_are_projected=True)
    looked_up_in_loop = model.apply(params, projected, lengths, inputs_are_projected=True, token_ids=token_ids)

    np.testing.assert_allclose(from_projected, direct, **TOLERANCE)
    np.testing.assert_allclose(looked_up_in_loop, direct, **TOLERANCE)


@pytest.mark.parametrize("loop", ["chunked", "scan"])
@pytest.mark.parametrize("cell,num_layers", [("gru", 2), ("pmgru", 1)])
def test_lookup_in_loop_matches_lookup_before(cell, num_layers, loop):
    table = jax.random.normal(jax.random.key(8), (30, 7))
    token_ids = jax.random.randint(jax.random.key(9), (4, 21), 1, 30)
    lengths = jnp.array([21, 3, 1, 7])
    labels = jnp.array([1, 0, 0, 1])
    model = SentimentClassifier(cell, hidden_size=5, num_layers=num_layers, chunk_length=4, loop=loop)
    params = model.init(jax.random.key(0), table[token_ids], lengths)

    def loss(params, table, lookup_in_loop):
        if lookup_in_loop:
            log_probs = model.apply(params, table, lengths, token_ids=token_ids)
        else:
            log_probs = model.apply(params, table[token_ids], lengths)
        return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).sum()

    in_loop, in_loop_grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, True)
    before, before_grads = jax.value_and_grad(loss, argnums=(0, 1))(params, table, False)

    np.testing.assert_allclose(in_loop, before, **TOLERANCE)
    # The table's gradient sums each row over its ids, as the gradient of the lookup does.
    for got, expected in zip(jax.tree.leaves(in_loop_grads), jax.tree.leaves(before_grads)):
        np.testing.assert_allclose(got, expected, **TOLERANCE)
