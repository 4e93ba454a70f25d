"""The sentiment classifier: word vectors -> recurrent stack -> ReLU -> dense -> log-probabilities."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gru_jax.cells import CELLS, uniform_init
from gru_jax.rnn import DEFAULT_CHUNK_LENGTH, RecurrentStack, sequence_mask

DEFAULT_NUM_LAYERS = {"gru": 2, "pmgru": 1}


class SentimentClassifier(nn.Module):
    """DLStudio's text classifier with embeddings, for either cell.

    The top layer's carry after each review's last real word goes through ReLU and a dense layer to
    `num_classes` logits, and the model returns their log-softmax (trained with the NLL loss).

    Attributes:
      cell: 'gru' or 'pmgru'.
      hidden_size: size of each recurrent layer's carry.
      num_layers: number of stacked recurrent layers.
      num_classes: number of output classes.
      unroll: time steps per iteration of the compiled loop.
      chunk_length: time steps per chunk of the recurrent layers' loops, see `gru_jax.rnn`.
      loop: 'chunked' (default) or 'scan' (Flax's `nn.scan`), see `gru_jax.rnn.RecurrentLayer`.
    """

    cell: str
    hidden_size: int = 100
    num_layers: int = 1
    num_classes: int = 2
    unroll: int = 1
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    loop: str = "chunked"

    @nn.compact
    def __call__(self, inputs, lengths, inputs_are_projected=False, token_ids=None):
        """Classify a padded batch.

        Args:
          inputs: <float32>[batch, time, input_size], word vectors; steps at or past a length are padding.
            With `inputs_are_projected`, rows of `project_table` instead, <float32>[batch, time,
            gates * hidden_size]. With `token_ids`, the table to look them up in, <float32>[rows, ...].
          lengths: <int32>[batch], the number of real steps of each sequence, at least 1.
          inputs_are_projected: whether `inputs` already went through the first layer's input weights.
          token_ids: None, or <int32>[batch, time] rows of the table `inputs`. The first recurrent layer
            then looks up each chunk's rows as it runs it, which skips the padding after the batch's
            longest sequence; `apply(params, table, lengths, token_ids=ids)` gives the same result as
            `apply(params, embed(table, ids), lengths)`.

        Returns:
          <float32>[batch, num_classes] log-probabilities.
        """
        if token_ids is None:
            inputs = jnp.swapaxes(inputs, 0, 1)
            time_steps = inputs.shape[0]
        else:
            token_ids = token_ids.T
            time_steps = token_ids.shape[0]
        mask = sequence_mask(lengths, time_steps)
        stack = RecurrentStack(self.cell, self.hidden_size, self.num_layers, self.unroll, self.chunk_length,
                               self.loop, name="rnn")
        final_carry, _ = stack(inputs, mask.T, inputs_are_projected=inputs_are_projected, token_ids=token_ids)
        features = nn.relu(final_carry[-1])
        # PyTorch's nn.Linear initialization, as in the reference model.
        init = uniform_init(1.0 / math.sqrt(self.hidden_size))
        logits = nn.Dense(self.num_classes, kernel_init=init, bias_init=init, name="head")(features)
        return jax.nn.log_softmax(logits)


def embed(table, token_ids):
    """Look up word vectors: table <float32>[vocab, dim], token_ids <int32>[...] -> <float32>[..., dim]."""
    return jnp.take(table, token_ids, axis=0, mode="clip")


def project_table(params, cell, table):
    """Apply the first recurrent layer's input weights and biases to every row of an embedding table.

    Looking up a review's rows in the result gives what the first layer computes from its word vectors,
    without a matrix product per word, which makes evaluation of a fixed model cheaper whenever the
    table has fewer rows than the words to score.

    Args:
      params: the classifier's variables, {'params': ...}.
      cell: 'gru' or 'pmgru'.
      table: <float32>[vocab, input_size].

    Returns:
      <float32>[vocab, gates * hidden_size], for `SentimentClassifier(..., inputs_are_projected=True)`.
    """
    return CELLS[cell].project(params["params"]["rnn"]["layer_0"]["cell"], table)

