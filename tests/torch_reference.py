"""PyTorch reference models for the parity tests and benchmarks.

Inputs are time-major, `<float32>[time, batch, input_size]`, the layout of DLStudio's `nn.GRU`
(batch_first=False). DLStudio classifies one review at a time, which `forward_each` reproduces on a
padded batch; `forward` with `lengths` also runs the whole padded batch at once.

State-dict keys are those that `gru_jax.conversion` reads and writes.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class TorchGRUClassifier(nn.Module):
    """DLStudio's GRU classifier: `nn.GRU`, then ReLU, a linear layer and log-softmax at the last real step.

    Keys: `gru.weight_ih_l{k}`, `gru.weight_hh_l{k}`, `gru.bias_ih_l{k}`, `gru.bias_hh_l{k}`, `fc.weight`, `fc.bias`.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, num_classes=2):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, inputs, lengths=None):
        """Classify sequences.

        Args:
          inputs: <float32>[time, batch, input_size].
          lengths: <int64>[batch], the real steps of each sequence, or None when every sequence fills `time`.

        Returns:
          <float32>[batch, num_classes] log-probabilities.
        """
        if lengths is None:
            outputs, _ = self.gru(inputs)
            last = outputs[-1]
        else:
            # A packed batch makes nn.GRU return each sequence's hidden state at its own last step.
            packed = pack_padded_sequence(inputs, lengths.cpu(), enforce_sorted=False)
            _, final_carry = self.gru(packed)
            last = final_carry[-1]
        return F.log_softmax(self.fc(F.relu(last)), dim=-1)


def pmgru_step(project1, project2, inputs, carry):
    """Advance DLStudio's pmGRU one step: inputs <float32>[batch, input_size], carry <float32>[batch, hidden_size].

    `project1` computes the forget gate from `[x; h]` and `project2` the candidate from `[x; f * h]`.
    """
    forget = torch.sigmoid(project1(torch.cat((inputs, carry), 1)))
    candidate = torch.tanh(project2(torch.cat((inputs, forget * carry), 1)))
    return (1 - forget) * carry + forget * candidate


class TorchPmGRUCell(nn.Module):
    """One pmGRU layer with DLStudio's two linear layers over the concatenated input and carry."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.project1 = nn.Linear(input_size + hidden_size, hidden_size)
        self.project2 = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, inputs, carry):
        """Advance one step, as `pmgru_step` does."""
        return pmgru_step(self.project1, self.project2, inputs, carry)


class TorchPmGRUClassifier(nn.Module):
    """A classifier around DLStudio's pmGRU cell: one layer stepped in a Python loop, ReLU, linear, log-softmax.

    Keys: `project1.weight`, `project1.bias`, `project2.weight`, `project2.bias`, `fc.weight`, `fc.bias`.
    """

    def __init__(self, input_size, hidden_size, num_classes=2):
        super().__init__()
        self.hidden_size = hidden_size
        self.project1 = nn.Linear(input_size + hidden_size, hidden_size)
        self.project2 = nn.Linear(input_size + hidden_size, hidden_size)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, inputs, lengths=None):
        """Classify sequences.

        Args:
          inputs: <float32>[time, batch, input_size].
          lengths: <int64>[batch], the real steps of each sequence, or None when every sequence fills `time`.
            At padded steps the carry stays as it was.

        Returns:
          <float32>[batch, num_classes] log-probabilities.
        """
        carry = inputs.new_zeros(inputs.shape[1], self.hidden_size)
        for step in range(inputs.shape[0]):
            updated = pmgru_step(self.project1, self.project2, inputs[step], carry)
            if lengths is None:
                carry = updated
            else:
                carry = torch.where((step < lengths)[:, None], updated, carry)
        return F.log_softmax(self.fc(F.relu(carry)), dim=-1)


class TorchPmGRUStack(nn.Module):
    """`num_layers` pmGRU layers, each reading the per-step outputs of the one below.

    Keys are `layers.{k}.project1.weight` and so on. The pmGRU classifier has one layer, and this stack
    is the reference for gru_jax's deeper ones.
    """

    def __init__(self, input_size, hidden_size, num_layers=1):
        super().__init__()
        self.hidden_size = hidden_size
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(TorchPmGRUCell(size, hidden_size) for size in sizes)

    def forward(self, inputs):
        """Run all layers over unpadded sequences.

        Args:
          inputs: <float32>[time, batch, input_size].

        Returns:
          outputs: <float32>[time, batch, hidden_size], the top layer's carry after each step.
          final_carry: <float32>[num_layers, batch, hidden_size].
        """
        final_carries = []
        outputs = inputs
        for layer in self.layers:
            carry = inputs.new_zeros(inputs.shape[1], self.hidden_size)
            steps = []
            for step_inputs in outputs:
                carry = layer(step_inputs, carry)
                steps.append(carry)
            outputs = torch.stack(steps)
            final_carries.append(carry)
        return outputs, torch.stack(final_carries)


def forward_each(model, inputs, lengths):
    """Classify each sequence of a padded batch on its own, without its padding, as DLStudio does.

    Args:
      model: a `TorchGRUClassifier` or `TorchPmGRUClassifier`.
      inputs: <float32>[time, batch, input_size].
      lengths: <int64>[batch], the real steps of each sequence.

    Returns:
      <float32>[batch, num_classes] log-probabilities.
    """
    log_probs = [model(inputs[:length, index : index + 1]) for index, length in enumerate(lengths.tolist())]
    return torch.cat(log_probs)


def run_stack_each(stack, inputs, lengths):
    """Run the recurrent layers on each sequence of a padded batch on its own, without its padding.

    Args:
      stack: an `nn.GRU` or a `TorchPmGRUStack`, started from a zero carry.
      inputs: <float32>[time, batch, input_size].
      lengths: <int64>[batch], the real steps of each sequence.

    Returns:
      outputs: list of <float32>[length, hidden_size], one per sequence.
      final_carry: <float32>[num_layers, batch, hidden_size].
    """
    outputs = []
    final_carries = []
    for index, length in enumerate(lengths.tolist()):
        sequence_outputs, final_carry = stack(inputs[:length, index : index + 1])
        outputs.append(sequence_outputs[:, 0])
        final_carries.append(final_carry)
    return outputs, torch.cat(final_carries, dim=1)
