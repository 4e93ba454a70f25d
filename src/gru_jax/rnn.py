"""Recurrent layers: a cell unrolled over time with `nn.scan`, under a mask; stacks of such layers.

Arrays here are time-major (`[time, batch, ...]`), the layout `nn.scan` iterates over.
"""

import flax.linen as nn
import jax.numpy as jnp

from gru_jax.cells import CELLS


def sequence_mask(lengths, max_length):
    """Return <bool>[batch, max_length], true where the step index is below the sequence's length."""
    return jnp.arange(max_length)[None, :] < lengths[:, None]


def _masked_step(cell, carry, step_inputs):
    projected, mask = step_inputs
    updated = cell(carry, projected)
    keep = mask[:, None]
    # A padded step returns the carry it was given, so the final carry is the one at the last real step.
    carry = jnp.where(keep, updated, carry)
    return carry, jnp.where(keep, updated, 0.0)


class RecurrentLayer(nn.Module):
    """One recurrent layer over a padded, time-major batch.

    The input-to-hidden products of all steps are computed as one matrix product before the scan, and
    only the recurrent products run inside it.

    Attributes:
      cell: 'gru' or 'pmgru'.
      hidden_size: size of the carry.
      unroll: time steps per iteration of the compiled loop (`nn.scan`'s unroll).
    """

    cell: str
    hidden_size: int
    unroll: int = 1

    @nn.compact
    def __call__(self, inputs, mask, initial_carry=None):
        """Run the cell over all steps.

        Args:
          inputs: <float32>[time, batch, input_size].
          mask: <bool>[time, batch], false at padded steps; padded steps leave the carry unchanged.
          initial_carry: <float32>[batch, hidden_size], zeros when None.

        Returns:
          final_carry: <float32>[batch, hidden_size], the carry after each sequence's last real step.
          outputs: <float32>[time, batch, hidden_size], the carry after each step, zero at padded steps.
        """
        cell = CELLS[self.cell](input_size=inputs.shape[-1], hidden_size=self.hidden_size, name="cell")
        projected = cell.project_inputs(inputs)
        if initial_carry is None:
            initial_carry = jnp.zeros((inputs.shape[1], self.hidden_size), projected.dtype)
        scan = nn.scan(
            _masked_step,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            unroll=self.unroll,
        )
        return scan(cell, initial_carry, (projected, mask))


class RecurrentStack(nn.Module):
    """`num_layers` recurrent layers, each reading the per-step outputs of the one below.

    Attributes:
      cell: 'gru' or 'pmgru'.
      hidden_size: size of each layer's carry.
      num_layers: number of layers.
      unroll: time steps per iteration of each layer's compiled loop.
    """

    cell: str
    hidden_size: int
    num_layers: int = 1
    unroll: int = 1

    @nn.compact
    def __call__(self, inputs, mask, initial_carry=None):
        """Run all layers.

        Args:
          inputs: <float32>[time, batch, input_size].
          mask: <bool>[time, batch].
          initial_carry: <float32>[num_layers, batch, hidden_size], zeros when None.

        Returns:
          final_carry: <float32>[num_layers, batch, hidden_size].
          outputs: <float32>[time, batch, hidden_size], the top layer's per-step outputs.
        """
        carries = []
        outputs = inputs
        for index in range(self.num_layers):
            layer = RecurrentLayer(self.cell, self.hidden_size, self.unroll, name=f"layer_{index}")
            carry, outputs = layer(outputs, mask, None if initial_carry is None else initial_carry[index])
            carries.append(carry)
        return jnp.stack(carries), outputs
