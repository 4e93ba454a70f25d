"""One time step of each recurrent cell.

Each cell splits its work in two, so that a layer can run the part that does not depend on the carry
outside the time loop:

* `project_inputs` applies the input-to-hidden weights to any number of time steps at once;
* `__call__` takes the carry and one projected time step, and returns the next carry.

Parameters are initialized as PyTorch initializes the reference modules: uniform in
[-1/sqrt(fan_in), 1/sqrt(fan_in)], with fan_in = hidden_size for `nn.GRU` and fan_in =
input_size + hidden_size for the pmGRU's `nn.Linear` layers over `[x; h]`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def uniform_init(bound):
    """Return an initializer that draws from U(-bound, bound), as PyTorch's recurrent and linear layers do."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class GRUCell(nn.Module):
    """The GRU of PyTorch's `nn.GRU`, one time step.

    With gates in PyTorch's order (reset r, update z, candidate n):

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Attributes:
      input_size: size of each input vector.
      hidden_size: size of the carry.

    Parameters (kernels are the transposes of PyTorch's weights, gate blocks in the order r, z, n):
      input_kernel: <float32>[input_size, 3 * hidden_size], `weight_ih_l{k}.T`.
      input_bias: <float32>[3 * hidden_size], `bias_ih_l{k}`.
      hidden_kernel: <float32>[hidden_size, 3 * hidden_size], `weight_hh_l{k}.T`.
      hidden_bias: <float32>[3 * hidden_size], `bias_hh_l{k}`; its n block stays inside the reset product.
    """

    input_size: int
    hidden_size: int

    def setup(self):
        init = uniform_init(1.0 / math.sqrt(self.hidden_size))
        gates = 3 * self.hidden_size
        self.input_kernel = self.param("input_kernel", init, (self.input_size, gates))
        self.input_bias = self.param("input_bias", init, (gates,))
        self.hidden_kernel = self.param("hidden_kernel", init, (self.hidden_size, gates))
        self.hidden_bias = self.param("hidden_bias", init, (gates,))

    def project_inputs(self, inputs):
        """Apply the input weights: <float32>[..., input_size] -> <float32>[..., 3 * hidden_size]."""
        return inputs @ self.input_kernel + self.input_bias

    def __call__(self, carry, projected):
        """Advance one step: carry <float32>[batch, hidden_size], projected <float32>[batch, 3 * hidden_size]."""
        hidden = carry @ self.hidden_kernel + self.hidden_bias
        input_r, input_z, input_n = jnp.split(projected, 3, axis=-1)
        hidden_r, hidden_z, hidden_n = jnp.split(hidden, 3, axis=-1)
        reset = jax.nn.sigmoid(input_r + hidden_r)
        update = jax.nn.sigmoid(input_z + hidden_z)
        candidate = jnp.tanh(input_n + reset * hidden_n)
        return (1.0 - update) * candidate + update * carry


class PmGRUCell(nn.Module):
    """DLStudio's "poor man's GRU" (a minimal gated unit), one time step.

    With `[a; b]` the concatenation of a and b:

        f  = sigmoid(W_f [x; h] + b_f)
        n  = tanh(W_n [x; f * h] + b_n)
        h' = (1 - f) * h + f * n

    DLStudio keeps W_f and W_n as two `nn.Linear(input_size + hidden_size, hidden_size)` layers; here
    each is split into its input columns and its hidden columns (W [x; h] = W_x x + W_h h).

    Attributes:
      input_size: size of each input vector.
      hidden_size: size of the carry.

    Parameters:
      input_kernel: <float32>[input_size, 2 * hidden_size], the input columns of W_f then W_n, transposed.
      bias: <float32>[2 * hidden_size], b_f then b_n.
      forget_hidden_kernel: <float32>[hidden_size, hidden_size], the hidden columns of W_f, transposed.
      candidate_hidden_kernel: <float32>[hidden_size, hidden_size], the hidden columns of W_n, transposed.
    """

    input_size: int
    hidden_size: int

    def setup(self):
        init = uniform_init(1.0 / math.sqrt(self.input_size + self.hidden_size))
        size = self.hidden_size
        self.input_kernel = self.param("input_kernel", init, (self.input_size, 2 * size))
        self.bias = self.param("bias", init, (2 * size,))
        self.forget_hidden_kernel = self.param("forget_hidden_kernel", init, (size, size))
        self.candidate_hidden_kernel = self.param("candidate_hidden_kernel", init, (size, size))

    def project_inputs(self, inputs):
        """Apply the input weights and biases: <float32>[..., input_size] -> <float32>[..., 2 * hidden_size]."""
        return inputs @ self.input_kernel + self.bias

    def __call__(self, carry, projected):
        """Advance one step: carry <float32>[batch, hidden_size], projected <float32>[batch, 2 * hidden_size]."""
        input_f, input_n = jnp.split(projected, 2, axis=-1)
        forget = jax.nn.sigmoid(input_f + carry @ self.forget_hidden_kernel)
        candidate = jnp.tanh(input_n + (forget * carry) @ self.candidate_hidden_kernel)
        return (1.0 - forget) * carry + forget * candidate


CELLS = {"gru": GRUCell, "pmgru": PmGRUCell}
