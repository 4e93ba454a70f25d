"""One time step of each recurrent cell.

Each cell splits its work in two, so that a layer can run the part that does not depend on the carry
outside the time loop:

* `project_inputs` applies the input-to-hidden weights to any number of time steps at once;
* `__call__` takes the carry and one projected time step, and returns the next carry.

Both methods call static functions of the cell class that take the parameters as a dict, and
`gru_jax.rnn` calls those functions directly inside its compiled loops. Each cell also has the
hand-written backward pass of its step (`step_backward`), so that the layer can keep the weight
gradients out of its time loop. Tests compare it with JAX's automatic differentiation.

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
    num_gates = 3
    # Whether a layer's loop should pass `step` the gate blocks as separate arrays (see `step`).
    loop_gate_blocks = True

    def setup(self):
        init = uniform_init(1.0 / math.sqrt(self.hidden_size))
        gates = 3 * self.hidden_size
        self.input_kernel = self.param("input_kernel", init, (self.input_size, gates))
        self.input_bias = self.param("input_bias", init, (gates,))
        self.hidden_kernel = self.param("hidden_kernel", init, (self.hidden_size, gates))
        self.hidden_bias = self.param("hidden_bias", init, (gates,))

    def param_dict(self):
        """Return the parameters by name, as the static functions take them."""
        return {"input_kernel": self.input_kernel, "input_bias": self.input_bias,
                "hidden_kernel": self.hidden_kernel, "hidden_bias": self.hidden_bias}

    def project_inputs(self, inputs):
        """Apply the input weights: <float32>[..., input_size] -> <float32>[..., 3 * hidden_size]."""
        return self.project(self.param_dict(), inputs)

    def __call__(self, carry, projected):
        """Advance one step: carry <float32>[batch, hidden_size], projected <float32>[batch, 3 * hidden_size]."""
        return self.step(self.param_dict(), carry, projected)[0]

    @staticmethod
    def project(params, inputs):
        """Apply the input weights and biases: <float32>[..., input_size] -> <float32>[..., 3 * hidden_size]."""
        return inputs @ params["input_kernel"] + params["input_bias"]

    @staticmethod
    def project_backward(params, inputs, d_projected, input_gradients):
        """Differentiate `project` over a block of steps.

        Args:
          inputs: <float32>[steps, batch, input_size].
          d_projected: <float32>[steps, batch, 3 * hidden_size], the cotangent of the projected inputs.
          input_gradients: whether to return the cotangent of `inputs`.

        Returns:
          (gradients of input_kernel and input_bias, <float32>[steps, batch, input_size] or None).
        """
        return _project_backward(params, inputs, d_projected, input_gradients, "input_bias")

    @staticmethod
    def step(params, carry, projected):
        """Advance one step and keep what `step_backward` needs.

        Args:
          carry: <float32>[batch, hidden_size].
          projected: <float32>[batch, 3 * hidden_size], or its gate blocks r, z, n as a tuple of three
            <float32>[batch, hidden_size]. The layer's loop passes the blocks: slicing them out of one
            array inside the loop kept XLA's CPU code from vectorizing the gate arithmetic.

        Returns:
          (next carry <float32>[batch, hidden_size], saved: the gates r, z, n and W_hn h + b_hn, each
          <float32>[batch, hidden_size]).
        """
        hidden = carry @ params["hidden_kernel"] + params["hidden_bias"]
        input_r, input_z, input_n = gate_blocks(projected, 3)
        hidden_r, hidden_z, hidden_n = jnp.split(hidden, 3, axis=-1)
        reset = jax.nn.sigmoid(input_r + hidden_r)
        update = jax.nn.sigmoid(input_z + hidden_z)
        candidate = jnp.tanh(input_n + reset * hidden_n)
        return (1.0 - update) * candidate + update * carry, (reset, update, candidate, hidden_n)

    @staticmethod
    def transposed_kernels(params):
        """Return the transposed hidden kernel that `step_backward` multiplies by.

        A layer computes it once, outside its time loop, because transposing inside the loop copied the
        kernel at every step.
        """
        return {"hidden_kernel": params["hidden_kernel"].T}

    @staticmethod
    def step_backward(transposed, carry, saved, d_next_carry):
        """Differentiate `step`.

        Args:
          transposed: what `transposed_kernels` returned.
          carry: <float32>[batch, hidden_size], the carry the step started from.
          saved: what `step` returned for that step.
          d_next_carry: <float32>[batch, hidden_size], the cotangent of the carry it returned.

        Returns:
          d_carry: <float32>[batch, hidden_size].
          d_projected: the cotangents of the gate blocks r, z, n of the projected inputs, each
            <float32>[batch, hidden_size].
          d_hidden: <float32>[batch, 3 * hidden_size], the cotangent of carry @ hidden_kernel + hidden_bias.
        """
        reset, update, candidate, hidden_n = saved
        d_candidate = d_next_carry * (1.0 - update)
        d_update = d_next_carry * (carry - candidate)
        d_candidate_sum = d_candidate * (1.0 - candidate * candidate)
        d_reset = d_candidate_sum * hidden_n
        d_reset_sum = d_reset * reset * (1.0 - reset)
        d_update_sum = d_update * update * (1.0 - update)
        d_hidden = jnp.concatenate([d_reset_sum, d_update_sum, d_candidate_sum * reset], axis=-1)
        d_carry = d_next_carry * update + d_hidden @ transposed["hidden_kernel"]
        return d_carry, (d_reset_sum, d_update_sum, d_candidate_sum), d_hidden

    @staticmethod
    def hidden_gradients(carries, saved, d_hidden):
        """Gradients of hidden_kernel and hidden_bias over a block of steps.

        Args:
          carries: <float32>[steps, batch, hidden_size], the carry each step started from.
          saved: what `step` returned, stacked over the steps.
          d_hidden: <float32>[steps, batch, 3 * hidden_size], from `step_backward`.
        """
        return {"hidden_kernel": _sum_of_outer_products(carries, d_hidden),
                "hidden_bias": d_hidden.sum(axis=(0, 1))}


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
    num_gates = 2
    # Slicing the two gates in the loop measured as fast at batch 32 and faster at batch 256 than
    # separate arrays. Each gate's arithmetic is a fusion of its own, between the two matrix products.
    loop_gate_blocks = False

    def setup(self):
        init = uniform_init(1.0 / math.sqrt(self.input_size + self.hidden_size))
        size = self.hidden_size
        self.input_kernel = self.param("input_kernel", init, (self.input_size, 2 * size))
        self.bias = self.param("bias", init, (2 * size,))
        self.forget_hidden_kernel = self.param("forget_hidden_kernel", init, (size, size))
        self.candidate_hidden_kernel = self.param("candidate_hidden_kernel", init, (size, size))

    def param_dict(self):
        """Return the parameters by name, as the static functions take them."""
        return {"input_kernel": self.input_kernel, "bias": self.bias,
                "forget_hidden_kernel": self.forget_hidden_kernel,
                "candidate_hidden_kernel": self.candidate_hidden_kernel}

    def project_inputs(self, inputs):
        """Apply the input weights and biases: <float32>[..., input_size] -> <float32>[..., 2 * hidden_size]."""
        return self.project(self.param_dict(), inputs)

    def __call__(self, carry, projected):
        """Advance one step: carry <float32>[batch, hidden_size], projected <float32>[batch, 2 * hidden_size]."""
        return self.step(self.param_dict(), carry, projected)[0]

    @staticmethod
    def project(params, inputs):
        """Apply the input weights and biases: <float32>[..., input_size] -> <float32>[..., 2 * hidden_size]."""
        return inputs @ params["input_kernel"] + params["bias"]

    @staticmethod
    def project_backward(params, inputs, d_projected, input_gradients):
        """Differentiate `project` over a block of steps; see `GRUCell.project_backward`."""
        return _project_backward(params, inputs, d_projected, input_gradients, "bias")

    @staticmethod
    def step(params, carry, projected):
        """Advance one step and keep what `step_backward` needs.

        Args:
          carry: <float32>[batch, hidden_size].
          projected: <float32>[batch, 2 * hidden_size], or its gate blocks f, n as a tuple; see
            `GRUCell.step`.

        Returns:
          (next carry <float32>[batch, hidden_size], saved: the gate f and the candidate n, each
          <float32>[batch, hidden_size]).
        """
        input_f, input_n = gate_blocks(projected, 2)
        forget = jax.nn.sigmoid(input_f + carry @ params["forget_hidden_kernel"])
        candidate = jnp.tanh(input_n + (forget * carry) @ params["candidate_hidden_kernel"])
        return (1.0 - forget) * carry + forget * candidate, (forget, candidate)

    @staticmethod
    def transposed_kernels(params):
        """Return the transposed hidden kernels that `step_backward` multiplies by; see `GRUCell`."""
        return {name: params[name].T for name in ("forget_hidden_kernel", "candidate_hidden_kernel")}

    @staticmethod
    def step_backward(transposed, carry, saved, d_next_carry):
        """Differentiate `step`, given in `transposed` what `transposed_kernels` returned.

        Returns:
          d_carry: <float32>[batch, hidden_size].
          d_projected: the cotangents of the gate blocks f and n of the projected inputs, each
            <float32>[batch, hidden_size].
          d_hidden: (cotangent of carry @ W_f's hidden columns, cotangent of (f * h) @ W_n's hidden
          columns), each <float32>[batch, hidden_size].
        """
        forget, candidate = saved
        d_candidate_sum = d_next_carry * forget * (1.0 - candidate * candidate)
        d_gated_carry = d_candidate_sum @ transposed["candidate_hidden_kernel"]
        d_forget = d_next_carry * (candidate - carry) + d_gated_carry * carry
        d_forget_sum = d_forget * forget * (1.0 - forget)
        d_carry = (d_next_carry * (1.0 - forget) + d_gated_carry * forget
                   + d_forget_sum @ transposed["forget_hidden_kernel"])
        return d_carry, (d_forget_sum, d_candidate_sum), (d_forget_sum, d_candidate_sum)

    @staticmethod
    def hidden_gradients(carries, saved, d_hidden):
        """Gradients of the two hidden kernels over a block of steps; see `GRUCell.hidden_gradients`."""
        forget, _ = saved
        d_forget_sum, d_candidate_sum = d_hidden
        return {"forget_hidden_kernel": _sum_of_outer_products(carries, d_forget_sum),
                "candidate_hidden_kernel": _sum_of_outer_products(forget * carries, d_candidate_sum)}


def gate_blocks(projected, count):
    """Return the `count` gate blocks of projected inputs, given whole or already split."""
    if isinstance(projected, (tuple, list)):
        return tuple(projected)
    return tuple(jnp.split(projected, count, axis=-1))


def _project_backward(params, inputs, d_projected, input_gradients, bias_name):
    """Differentiate `inputs @ input_kernel + bias` over a block of steps, for either cell's parameter names."""
    gradients = {"input_kernel": _sum_of_outer_products(inputs, d_projected),
                 bias_name: d_projected.sum(axis=(0, 1))}
    d_inputs = d_projected @ params["input_kernel"].T if input_gradients else None
    return gradients, d_inputs


def _sum_of_outer_products(left, right):
    """Sum left[i]^T right[i] over all leading axes: <float32>[..., m], <float32>[..., n] -> <float32>[m, n]."""
    return left.reshape(-1, left.shape[-1]).T @ right.reshape(-1, right.shape[-1])


CELLS = {"gru": GRUCell, "pmgru": PmGRUCell}
