"""Recurrent layers: a cell run over time under a mask, in compiled loops with a hand-written gradient.

Arrays here are time-major (`[time, batch, ...]`).

A layer runs its time steps in chunks of `chunk_length` steps inside one `lax.fori_loop`, and stops
after the chunk that contains the last real step of any sequence in the batch. The padded length of a
batch therefore fixes only the shapes that are compiled, while the work follows the longest sequence
actually present. Each chunk applies the input weights to its steps as one matrix product and scans
only the recurrent part. The backward pass (`jax.custom_vjp`) walks the chunks in reverse, scans the
cell's `step_backward` inside each, and computes the weight gradients of the chunk as matrix products
over all its steps, outside the scan. Given token ids and a table instead of word vectors, each chunk
looks up its own rows, so the padded steps after the last chunk that runs are never looked up either.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from gru_jax.cells import CELLS, gate_blocks

DEFAULT_CHUNK_LENGTH = 16


def sequence_mask(lengths, max_length):
    """Return <bool>[batch, max_length], true where the step index is below the sequence's length."""
    return jnp.arange(max_length)[None, :] < lengths[:, None]


def _num_chunks(mask, chunk_length):
    """Return the number of chunks up to the one that contains the last real step of any sequence."""
    step_numbers = jnp.arange(1, mask.shape[0] + 1)
    num_steps = jnp.max(jnp.where(jnp.any(mask, axis=1), step_numbers, 0))
    return (num_steps + chunk_length - 1) // chunk_length


def _chunk(array, index, chunk_length):
    return lax.dynamic_slice_in_dim(array, index * chunk_length, chunk_length, axis=0)


def _put_chunk(array, chunk, index, chunk_length):
    return lax.dynamic_update_slice_in_dim(array, chunk, index * chunk_length, axis=0)


def _chunk_inputs(inputs, token_ids, index, chunk_length):
    """Return a chunk's inputs: a slice of `inputs`, or with `token_ids` the table rows of the chunk's ids."""
    if token_ids is None:
        return _chunk(inputs, index, chunk_length)
    return jnp.take(inputs, _chunk(token_ids, index, chunk_length), axis=0, mode="clip")


def _forward(cell, params, inputs, token_ids, mask, initial_carry, chunk_length, unroll, inputs_are_projected,
             save_residuals):
    """Run the layer; with `save_residuals`, also return what `_backward` needs."""
    time_steps, batch = mask.shape

    def chunk_body(index, state):
        carry, outputs, residuals = state
        chunk_inputs = _chunk_inputs(inputs, token_ids, index, chunk_length)
        projected = chunk_inputs if inputs_are_projected else cell.project(params, chunk_inputs)
        if cell.loop_gate_blocks:
            projected = gate_blocks(projected, cell.num_gates)

        def step(carry, step_inputs):
            projected_step, keep = step_inputs
            updated, saved = cell.step(params, carry, projected_step)
            keep = keep[:, None]
            # A padded step returns the carry it was given, so the final carry is the one at the last real step.
            return jnp.where(keep, updated, carry), (jnp.where(keep, updated, 0.0), (carry, saved))

        carry, (chunk_outputs, chunk_residuals) = lax.scan(
            step, carry, (projected, _chunk(mask, index, chunk_length)), unroll=unroll)
        outputs = _put_chunk(outputs, chunk_outputs, index, chunk_length)
        if save_residuals:
            residuals = jax.tree.map(lambda buffer, chunk: _put_chunk(buffer, chunk, index, chunk_length),
                                     residuals, chunk_residuals)
        return carry, outputs, residuals

    outputs = jnp.zeros((time_steps, batch, initial_carry.shape[-1]), initial_carry.dtype)
    residuals = None
    if save_residuals:
        def first_step():
            first_inputs = _chunk_inputs(inputs, token_ids, 0, 1)[0]
            return cell.step(params, initial_carry,
                             first_inputs if inputs_are_projected else cell.project(params, first_inputs))

        step_shapes = jax.eval_shape(first_step)
        residuals = jax.tree.map(lambda shape: jnp.zeros((time_steps, *shape.shape), shape.dtype),
                                 (initial_carry, step_shapes[1]))
    final_carry, outputs, residuals = lax.fori_loop(
        0, _num_chunks(mask, chunk_length), chunk_body, (initial_carry, outputs, residuals))
    return (final_carry, outputs), residuals


def _backward(cell, params, inputs, token_ids, mask, residuals, d_final_carry, d_outputs, chunk_length, unroll,
              inputs_are_projected, input_gradients):
    """Return the gradients of the params, the cotangent of the inputs (or None) and of the initial carry.

    With `token_ids`, the cotangent of `inputs` is that of the table, each row the sum over its ids.
    """
    num_chunks = _num_chunks(mask, chunk_length)
    transposed = cell.transposed_kernels(params)

    def chunk_body(reverse_index, state):
        d_carry, gradients, d_inputs = state
        index = num_chunks - 1 - reverse_index
        carries, saved = jax.tree.map(lambda buffer: _chunk(buffer, index, chunk_length), residuals)
        chunk_d_outputs = None if d_outputs is None else _chunk(d_outputs, index, chunk_length)

        def step(d_carry, step_inputs):
            carry, saved_step, keep, d_output = step_inputs
            keep = keep[:, None]
            d_updated = d_carry if d_output is None else d_carry + d_output
            d_updated = jnp.where(keep, d_updated, 0.0)
            d_previous, d_projected, d_hidden = cell.step_backward(transposed, carry, saved_step, d_updated)
            return jnp.where(keep, d_previous, d_carry), (d_projected, d_hidden)

        d_carry, (d_projected, d_hidden) = lax.scan(
            step, d_carry, (carries, saved, _chunk(mask, index, chunk_length), chunk_d_outputs),
            reverse=True, unroll=unroll)
        d_projected = jnp.concatenate(d_projected, axis=-1)

        chunk_gradients = cell.hidden_gradients(carries, saved, d_hidden)
        if inputs_are_projected:
            chunk_d_inputs = d_projected
        else:
            input_part, chunk_d_inputs = cell.project_backward(
                params, _chunk_inputs(inputs, token_ids, index, chunk_length), d_projected, input_gradients)
            chunk_gradients.update(input_part)
        # With projected inputs, the input weights are not used, and their gradients stay zero.
        gradients = {**gradients, **{name: gradients[name] + value for name, value in chunk_gradients.items()}}
        if input_gradients and token_ids is None:
            d_inputs = _put_chunk(d_inputs, chunk_d_inputs, index, chunk_length)
        elif input_gradients:
            chunk_ids = _chunk(token_ids, index, chunk_length)
            d_inputs = d_inputs.at[chunk_ids].add(chunk_d_inputs, mode="clip")
        return d_carry, gradients, d_inputs

    gradients = jax.tree.map(jnp.zeros_like, params)
    d_inputs = jnp.zeros_like(inputs) if input_gradients else None
    d_initial_carry, gradients, d_inputs = lax.fori_loop(
        0, num_chunks, chunk_body, (d_final_carry, gradients, d_inputs))
    return gradients, d_inputs, d_initial_carry


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7))
def run_layer(cell, params, inputs, mask, initial_carry, chunk_length, unroll, inputs_are_projected, token_ids=None):
    """Run `cell` over a padded, time-major batch.

    Args:
      cell: a cell class of `gru_jax.cells`, whose static functions do the work.
      params: the cell's parameters, as its `param_dict` returns them.
      inputs: <float32>[time, batch, input_size], or the projected inputs <float32>[time, batch,
        gates * hidden_size] when `inputs_are_projected`. `time` is a multiple of `chunk_length`.
        With `token_ids`, a table instead, <float32>[rows, input_size] (or [rows, gates * hidden_size]).
      mask: <bool>[time, batch], false at padded steps; padded steps leave the carry unchanged.
      initial_carry: <float32>[batch, hidden_size].
      chunk_length: time steps per chunk.
      unroll: time steps per iteration of the scan inside a chunk.
      inputs_are_projected: whether `inputs` already went through `cell.project`.
      token_ids: None, or <int32>[time, batch] rows of the table `inputs`. Each chunk then looks up its
        own rows, so the steps after the last chunk that runs are never looked up.

    Returns:
      final_carry: <float32>[batch, hidden_size], the carry after each sequence's last real step.
      outputs: <float32>[time, batch, hidden_size], the carry after each step, zero at padded steps.
    """
    outputs, _ = _forward(cell, params, inputs, token_ids, mask, initial_carry, chunk_length, unroll,
                          inputs_are_projected, save_residuals=False)
    return outputs


def _run_layer_forward(cell, params, inputs, mask, initial_carry, chunk_length, unroll, inputs_are_projected,
                       token_ids):
    # With symbolic zeros, every argument arrives as a CustomVJPPrimal whose `perturbed` is true when the
    # caller differentiates with respect to it. Word vectors from the fixed embedding table are not
    # differentiated, so the backward pass skips their cotangent, a matrix product as large as the projection.
    input_gradients = inputs.perturbed
    params, inputs, mask, initial_carry, token_ids = jax.tree.map(
        lambda primal: primal.value, (params, inputs, mask, initial_carry, token_ids),
        is_leaf=lambda node: isinstance(node, CustomVJPPrimal))
    outputs, residuals = _forward(cell, params, inputs, token_ids, mask, initial_carry, chunk_length, unroll,
                                  inputs_are_projected, save_residuals=True)
    return outputs, (params, inputs, token_ids, mask, residuals, input_gradients)


def _run_layer_backward(cell, chunk_length, unroll, inputs_are_projected, saved, cotangents):
    params, inputs, token_ids, mask, residuals, input_gradients = saved
    d_final_carry, d_outputs = cotangents
    if isinstance(d_final_carry, SymbolicZero):
        d_final_carry = jnp.zeros(d_final_carry.shape, d_final_carry.dtype)
    if isinstance(d_outputs, SymbolicZero):
        d_outputs = None
    gradients, d_inputs, d_initial_carry = _backward(
        cell, params, inputs, token_ids, mask, residuals, d_final_carry, d_outputs, chunk_length, unroll,
        inputs_are_projected, input_gradients)
    return gradients, d_inputs, None, d_initial_carry, None


run_layer.defvjp(_run_layer_forward, _run_layer_backward, symbolic_zeros=True)


def _masked_scan_step(cell, carry, step_inputs):
    projected, mask = step_inputs
    updated = cell(carry, projected)
    keep = mask[:, None]
    # A padded step returns the carry it was given, so the final carry is the one at the last real step.
    carry = jnp.where(keep, updated, carry)
    return carry, jnp.where(keep, updated, 0.0)


class RecurrentLayer(nn.Module):
    """One recurrent layer over a padded, time-major batch; see the module docstring for how it runs.

    Attributes:
      cell: 'gru' or 'pmgru'.
      hidden_size: size of the carry.
      unroll: time steps per iteration of the compiled loop inside a chunk.
      chunk_length: time steps per chunk; the work of a batch is rounded up to a multiple of it.
      loop: 'chunked', the chunked loop with a hand-written gradient described above, or 'scan',
        Flax's `nn.scan` over every padded step with JAX's automatic gradient. Both compute the same
        values and use the same parameters; 'chunked' trained 2.6 to 3.1 times faster on a CPU
        (`scripts/speed_levers.py`).
    """

    cell: str
    hidden_size: int
    unroll: int = 1
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    loop: str = "chunked"

    @nn.compact
    def __call__(self, inputs, mask, initial_carry=None, inputs_are_projected=False, token_ids=None):
        """Run the cell over all steps.

        Args:
          inputs: <float32>[time, batch, input_size].
          mask: <bool>[time, batch], false at padded steps; padded steps leave the carry unchanged.
          initial_carry: <float32>[batch, hidden_size], zeros when None.
          inputs_are_projected: `inputs` are <float32>[time, batch, gates * hidden_size], already
            multiplied by this layer's input weights (see `gru_jax.classifier.project_table`). The
            parameters must exist then, because their shapes cannot be read from such inputs.
          token_ids: None, or <int32>[time, batch]. `inputs` is then a table with one row per id
            (<float32>[rows, input_size], or projected), and the chunked loop looks up each chunk's
            rows as it runs it, so the padding after the last chunk is never looked up.

        Returns:
          final_carry: <float32>[batch, hidden_size], the carry after each sequence's last real step.
          outputs: <float32>[time, batch, hidden_size], the carry after each step, zero at padded steps.
        """
        cell_class = CELLS[self.cell]
        if inputs_are_projected:
            stored = self.get_variable("params", "cell")
            if stored is None:
                raise ValueError("projected inputs need existing parameters; initialize the model with word vectors")
            input_size = stored["input_kernel"].shape[0]
        else:
            input_size = inputs.shape[-1]
        cell = cell_class(input_size=input_size, hidden_size=self.hidden_size, name="cell")
        if self.loop == "scan":
            if token_ids is not None:
                inputs = jnp.take(inputs, token_ids, axis=0, mode="clip")
            projected = inputs if inputs_are_projected else cell.project_inputs(inputs)
            if initial_carry is None:
                initial_carry = jnp.zeros((mask.shape[1], self.hidden_size), projected.dtype)
            if cell_class.loop_gate_blocks:
                projected = gate_blocks(projected, cell_class.num_gates)
            scan = nn.scan(_masked_scan_step, variable_broadcast="params", split_rngs={"params": False},
                           in_axes=0, out_axes=0, unroll=self.unroll)
            return scan(cell, initial_carry, (projected, mask))
        if self.loop != "chunked":
            raise ValueError(f"loop '{self.loop}' is unknown; use 'chunked' or 'scan'")
        params = cell.param_dict()

        time_steps, batch = mask.shape
        padding = -time_steps % self.chunk_length
        if padding:
            if token_ids is None:
                inputs = jnp.pad(inputs, ((0, padding), (0, 0), (0, 0)))
            else:
                token_ids = jnp.pad(token_ids, ((0, padding), (0, 0)))
            mask = jnp.pad(mask, ((0, padding), (0, 0)))
        if initial_carry is None:
            initial_carry = jnp.zeros((batch, self.hidden_size), inputs.dtype)
        final_carry, outputs = run_layer(cell_class, params, inputs, mask, initial_carry, self.chunk_length,
                                         self.unroll, inputs_are_projected, token_ids)
        return final_carry, outputs[:time_steps]


class RecurrentStack(nn.Module):
    """`num_layers` recurrent layers, each reading the per-step outputs of the one below.

    Attributes:
      cell: 'gru' or 'pmgru'.
      hidden_size: size of each layer's carry.
      num_layers: number of layers.
      unroll: time steps per iteration of each layer's compiled loop inside a chunk.
      chunk_length: time steps per chunk, see `RecurrentLayer`.
      loop: 'chunked' or 'scan', see `RecurrentLayer`.
    """

    cell: str
    hidden_size: int
    num_layers: int = 1
    unroll: int = 1
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    loop: str = "chunked"

    @nn.compact
    def __call__(self, inputs, mask, initial_carry=None, inputs_are_projected=False, token_ids=None):
        """Run all layers.

        Args:
          inputs: <float32>[time, batch, input_size].
          mask: <bool>[time, batch].
          initial_carry: <float32>[num_layers, batch, hidden_size], zeros when None.
          inputs_are_projected: the first layer's inputs are already projected, see `RecurrentLayer`.
          token_ids: None, or <int32>[time, batch] rows of the table `inputs` for the first layer, see
            `RecurrentLayer`.

        Returns:
          final_carry: <float32>[num_layers, batch, hidden_size].
          outputs: <float32>[time, batch, hidden_size], the top layer's per-step outputs.
        """
        carries = []
        outputs = inputs
        for index in range(self.num_layers):
            layer = RecurrentLayer(self.cell, self.hidden_size, self.unroll, self.chunk_length, self.loop,
                                   name=f"layer_{index}")
            carry, outputs = layer(outputs, mask, None if initial_carry is None else initial_carry[index],
                                   inputs_are_projected=inputs_are_projected and index == 0,
                                   token_ids=token_ids if index == 0 else None)
            carries.append(carry)
        return jnp.stack(carries), outputs
