"""Parity of gru_jax with PyTorch in float32 on CPU.

Each test builds a PyTorch reference with random weights, converts them with `params_from_torch`, and
compares gru_jax on a padded batch with PyTorch run on each sequence without its padding, as DLStudio
runs one review at a time. Padded steps hold random values, not zeros, so a model that read them
would fail.

Run with `PYTHONPATH=src:tests python -m pytest tests/test_parity.py`.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from gru_jax import conversion
from gru_jax.classifier import SentimentClassifier
from gru_jax.errors import CheckpointError, ConfigError
from gru_jax.rnn import RecurrentStack, sequence_mask
from torch_reference import (
    TorchGRUClassifier,
    TorchPmGRUClassifier,
    TorchPmGRUStack,
    forward_each,
    run_stack_each,
)

torch.set_default_dtype(torch.float32)

# One forward or backward pass differs from PyTorch only by float32 rounding, which depends on the
# order of the sums in each matrix product. ATOL covers values near zero, where a relative bound is
# meaningless.
FORWARD_RTOL = 1e-5
FORWARD_ATOL = 1e-6

# Ten SGD steps with momentum add up the rounding differences of ten backward passes.
TRAINING_RTOL = 1e-4
TRAINING_ATOL = 1e-6

MAX_LENGTH = 12
LEARNING_RATE = 0.5
MOMENTUM = 0.9
SGD_STEPS = 10


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Run PyTorch on one thread, because on these small matrices its thread pool only competes with XLA's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Batch(NamedTuple):
    """A padded batch in gru_jax's batch-major layout."""

    inputs: np.ndarray  # <float32>[batch, MAX_LENGTH, input_size]
    lengths: np.ndarray  # <int32>[batch]
    labels: np.ndarray  # <int32>[batch]

    def torch_inputs(self):
        """Return the inputs time-major, <float32>[MAX_LENGTH, batch, input_size], as the references take them."""
        return torch.from_numpy(np.ascontiguousarray(self.inputs.transpose(1, 0, 2)))

    def torch_lengths(self):
        return torch.from_numpy(self.lengths.astype(np.int64))


def make_batch(seed, batch_size, input_size):
    """Draw a batch with a length-1 sequence and a full-length one (a single full-length one for batch_size 1)."""
    rng = np.random.default_rng(seed)
    if batch_size == 1:
        lengths = np.array([MAX_LENGTH])
    else:
        lengths = np.concatenate([[1, MAX_LENGTH], rng.integers(1, MAX_LENGTH + 1, batch_size - 2)])
    # Vectors of norm about 2 keep the gates away from saturation for any input_size.
    inputs = rng.normal(scale=2.0 / math.sqrt(input_size), size=(batch_size, MAX_LENGTH, input_size))
    labels = rng.integers(0, 2, batch_size)
    return Batch(inputs.astype(np.float32), lengths.astype(np.int32), labels.astype(np.int32))


class Config(NamedTuple):
    cell: str
    num_layers: int
    batch_size: int
    hidden_size: int
    input_size: int


def config_params(*configs):
    return [pytest.param(Config(*config), id="{}-L{}-B{}-H{}-D{}".format(*config)) for config in configs]


# Every value of every dimension appears for each cell, because the full cross product (72 cases) would
# run for minutes.
STACK_CONFIGS = config_params(*[
    (cell, *sizes)
    for cell in ("gru", "pmgru")
    for sizes in [(1, 1, 1, 7), (1, 64, 257, 300), (2, 64, 100, 7), (2, 1, 257, 300), (3, 64, 1, 300), (3, 1, 100, 7)]
])

# The PyTorch pmGRU classifier has one layer, so deeper pmGRU stacks are covered by STACK_CONFIGS only.
CLASSIFIER_CONFIGS = config_params(
    ("gru", 1, 64, 100, 300),
    ("gru", 2, 64, 257, 7),
    ("gru", 3, 64, 1, 300),
    ("gru", 2, 1, 100, 7),
    ("pmgru", 1, 64, 257, 300),
    ("pmgru", 1, 64, 1, 7),
    ("pmgru", 1, 1, 100, 300),
)

SGD_CONFIGS = config_params(("gru", 2, 64, 100, 300), ("pmgru", 1, 64, 100, 300))


def make_torch_classifier(config, seed=0):
    torch.manual_seed(seed)
    if config.cell == "gru":
        return TorchGRUClassifier(config.input_size, config.hidden_size, config.num_layers)
    return TorchPmGRUClassifier(config.input_size, config.hidden_size)


def make_torch_stack(config, seed=0):
    """Return the reference layers and their gru_jax `RecurrentStack` parameters."""
    torch.manual_seed(seed)
    if config.cell == "gru":
        model = TorchGRUClassifier(config.input_size, config.hidden_size, config.num_layers)
        return model.gru, conversion.params_from_torch(model.state_dict(), "gru")["params"]["rnn"]

    stack = TorchPmGRUStack(config.input_size, config.hidden_size, config.num_layers)
    rnn_params = {}
    for index, layer in enumerate(stack.layers):
        weights = [tensor.detach().numpy() for tensor in (
            layer.project1.weight, layer.project1.bias, layer.project2.weight, layer.project2.bias)]
        rnn_params[f"layer_{index}"] = {"cell": conversion.pmgru_cell_from_torch(*weights)}
    return stack, rnn_params


def torch_state(model):
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}


def run_jax_stack(config, rnn_params, batch):
    """Return gru_jax's final carry <float32>[num_layers, batch, hidden] and outputs <float32>[time, batch, hidden]."""
    stack = RecurrentStack(config.cell, config.hidden_size, config.num_layers)
    mask = sequence_mask(jnp.asarray(batch.lengths), MAX_LENGTH)
    final_carry, outputs = jax.jit(stack.apply)({"params": rnn_params}, jnp.asarray(batch.inputs).swapaxes(0, 1), mask.T)
    return np.asarray(final_carry), np.asarray(outputs)


@functools.cache
def loss_and_gradients(cell, hidden_size, num_layers):
    """Return a jitted function (params, inputs, lengths, labels) -> ((mean NLL loss, log_probs), gradients)."""
    model = SentimentClassifier(cell, hidden_size, num_layers)

    def loss_fn(params, inputs, lengths, labels):
        log_probs = model.apply(params, inputs, lengths)
        loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
        return loss, log_probs

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def run_jax_classifier(config, params, batch):
    """Return gru_jax's loss, log-probabilities <float32>[batch, 2] and gradients in PyTorch layout."""
    step = loss_and_gradients(config.cell, config.hidden_size, config.num_layers)
    (loss, log_probs), gradients = step(params, batch.inputs, batch.lengths, batch.labels)
    return float(loss), np.asarray(log_probs), conversion.params_to_numpy(gradients, config.cell)


def run_torch_classifier(model, batch):
    """Return PyTorch's loss, log-probabilities and gradients, each sequence run without its padding."""
    model.zero_grad()
    log_probs = forward_each(model, batch.torch_inputs(), batch.torch_lengths())
    loss = F.nll_loss(log_probs, torch.from_numpy(batch.labels.astype(np.int64)))
    loss.backward()
    gradients = {name: parameter.grad.numpy().copy() for name, parameter in model.named_parameters()}
    return loss.item(), log_probs.detach().numpy(), gradients


def train_jax(config, params, batches):
    """Run optax SGD with momentum over `batches` and return the final parameters in PyTorch layout."""
    step = loss_and_gradients(config.cell, config.hidden_size, config.num_layers)
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    opt_state = optimizer.init(params)
    for batch in batches:
        _, gradients = step(params, batch.inputs, batch.lengths, batch.labels)
        updates, opt_state = optimizer.update(gradients, opt_state, params)
        params = optax.apply_updates(params, updates)
    return conversion.params_to_numpy(params, config.cell)


def train_torch(model, batches):
    """Run torch.optim.SGD with momentum over `batches` and return the final state dict as numpy arrays.

    Each step runs the reference's padded-batch forward, which `test_classifier_matches_torch_batched_forward`
    checks, because running each sequence alone was about 50 times slower on a 2-core CPU.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    for batch in batches:
        optimizer.zero_grad()
        log_probs = model(batch.torch_inputs(), batch.torch_lengths())
        F.nll_loss(log_probs, torch.from_numpy(batch.labels.astype(np.int64))).backward()
        optimizer.step()
    return torch_state(model)


def swap_reset_and_update(state_dict):
    """Return a GRU state dict with the r and z gate blocks of every weight and bias exchanged."""
    swapped = {}
    for name, tensor in state_dict.items():
        if name.startswith("gru."):
            reset, update, candidate = tensor.chunk(3, dim=0)
            tensor = torch.cat([update, reset, candidate])
        swapped[name] = tensor
    return swapped


@pytest.mark.parametrize("config", STACK_CONFIGS)
def test_stack_matches_torch(config):
    batch = make_batch(1, config.batch_size, config.input_size)
    torch_stack, rnn_params = make_torch_stack(config)
    with torch.no_grad():
        torch_outputs, torch_final = run_stack_each(torch_stack, batch.torch_inputs(), batch.torch_lengths())

    final_carry, outputs = run_jax_stack(config, rnn_params, batch)

    np.testing.assert_allclose(final_carry, torch_final.numpy(), rtol=FORWARD_RTOL, atol=FORWARD_ATOL)
    real_outputs = np.concatenate([outputs[:length, index] for index, length in enumerate(batch.lengths)])
    np.testing.assert_allclose(
        real_outputs, torch.cat(torch_outputs).numpy(), rtol=FORWARD_RTOL, atol=FORWARD_ATOL
    )
    padded = ~np.asarray(sequence_mask(jnp.asarray(batch.lengths), MAX_LENGTH)).T
    assert not outputs[padded].any()


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS)
def test_classifier_log_probs_match_torch(config):
    batch = make_batch(2, config.batch_size, config.input_size)
    model = make_torch_classifier(config)
    params = conversion.params_from_torch(model.state_dict(), config.cell)

    _, torch_log_probs, _ = run_torch_classifier(model, batch)
    _, log_probs, _ = run_jax_classifier(config, params, batch)

    np.testing.assert_allclose(log_probs, torch_log_probs, rtol=FORWARD_RTOL, atol=FORWARD_ATOL)


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS)
def test_classifier_gradients_match_torch(config):
    batch = make_batch(2, config.batch_size, config.input_size)
    model = make_torch_classifier(config)
    params = conversion.params_from_torch(model.state_dict(), config.cell)

    torch_loss, _, torch_gradients = run_torch_classifier(model, batch)
    loss, _, gradients = run_jax_classifier(config, params, batch)

    np.testing.assert_allclose(loss, torch_loss, rtol=FORWARD_RTOL, atol=FORWARD_ATOL)
    assert gradients.keys() == torch_gradients.keys()
    for name, gradient in gradients.items():
        np.testing.assert_allclose(
            gradient, torch_gradients[name], rtol=FORWARD_RTOL, atol=FORWARD_ATOL, err_msg=f"gradient of {name}"
        )


def test_classifier_matches_torch_batched_forward():
    """The references' own padded-batch forward (packed for nn.GRU, masked for pmGRU) agrees too."""
    for config in (Config("gru", 2, 64, 100, 7), Config("pmgru", 1, 64, 100, 7)):
        batch = make_batch(3, config.batch_size, config.input_size)
        model = make_torch_classifier(config)
        params = conversion.params_from_torch(model.state_dict(), config.cell)
        with torch.no_grad():
            torch_log_probs = model(batch.torch_inputs(), batch.torch_lengths()).numpy()

        _, log_probs, _ = run_jax_classifier(config, params, batch)

        np.testing.assert_allclose(
            log_probs, torch_log_probs, rtol=FORWARD_RTOL, atol=FORWARD_ATOL, err_msg=config.cell
        )


@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_momentum_matches_torch(config):
    batches = [make_batch(10 + step, config.batch_size, config.input_size) for step in range(SGD_STEPS)]
    model = make_torch_classifier(config)
    initial = torch_state(model)
    params = conversion.params_from_torch(model.state_dict(), config.cell)

    torch_final = train_torch(model, batches)
    final = train_jax(config, params, batches)

    # The comparison means something only if training moved the parameters well beyond the tolerance.
    moved = max(np.max(np.abs(torch_final[name] - initial[name])) for name in initial)
    assert moved > 1000 * TRAINING_ATOL
    assert final.keys() == torch_final.keys()
    for name, value in final.items():
        np.testing.assert_allclose(
            value, torch_final[name], rtol=TRAINING_RTOL, atol=TRAINING_ATOL, err_msg=f"{name} after {SGD_STEPS} steps"
        )


def test_gate_swap_exceeds_tolerance():
    """Exchanging the reset and update gates must fail the forward comparison by a wide margin."""
    config = Config("gru", 2, 64, 100, 7)
    batch = make_batch(4, config.batch_size, config.input_size)
    model = make_torch_classifier(config)
    with torch.no_grad():
        _, torch_final = run_stack_each(model.gru, batch.torch_inputs(), batch.torch_lengths())
    swapped = conversion.params_from_torch(swap_reset_and_update(model.state_dict()), "gru")

    final_carry, _ = run_jax_stack(config, swapped["params"]["rnn"], batch)

    difference = np.max(np.abs(final_carry - torch_final.numpy()))
    assert difference > 1000 * FORWARD_ATOL
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(final_carry, torch_final.numpy(), rtol=FORWARD_RTOL, atol=FORWARD_ATOL)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_round_trip_gru_is_exact(num_layers):
    model = TorchGRUClassifier(7, 5, num_layers)
    state_dict = model.state_dict()

    restored = conversion.params_to_torch(conversion.params_from_torch(state_dict, "gru"), "gru")

    assert list(restored) == list(state_dict)
    for name, tensor in state_dict.items():
        assert torch.equal(restored[name], tensor), name
    TorchGRUClassifier(7, 5, num_layers).load_state_dict(restored, strict=True)


@pytest.mark.parametrize("layout", ["linear", "sequential", "data_parallel"])
def test_round_trip_pmgru_is_exact(layout):
    model = TorchPmGRUClassifier(7, 5)
    state_dict = model.state_dict()
    if layout == "sequential":
        saved = {name.replace("project1.", "project1.0.").replace("project2.", "project2.0."): tensor
                 for name, tensor in state_dict.items()}
    elif layout == "data_parallel":
        saved = {f"module.{name}": tensor for name, tensor in state_dict.items()}
    else:
        saved = state_dict

    restored = conversion.params_to_torch(conversion.params_from_torch(saved, "pmgru"), "pmgru")

    assert list(restored) == list(state_dict)
    for name, tensor in state_dict.items():
        assert torch.equal(restored[name], tensor), name
    TorchPmGRUClassifier(7, 5).load_state_dict(restored, strict=True)


def test_params_from_torch_copies_tensors():
    model = TorchGRUClassifier(7, 5, 1)
    params = conversion.params_from_torch(model.state_dict(), "gru")
    before = params["params"]["head"]["bias"].copy()

    with torch.no_grad():
        model.fc.bias.add_(1.0)

    np.testing.assert_array_equal(params["params"]["head"]["bias"], before)


def test_params_from_torch_reads_sizes():
    model = TorchGRUClassifier(7, 5, 3)
    params = conversion.params_from_torch(model.state_dict(), "gru")

    sizes = conversion.check_params_match(params, "gru", input_size=7, hidden_size=5, num_layers=3, num_classes=2)

    assert sizes == conversion.ModelSizes(input_size=7, hidden_size=5, num_layers=3, num_classes=2)


def conversion_error(function, *args, **kwargs):
    with pytest.raises(CheckpointError) as info:
        function(*args, **kwargs)
    return str(info.value)


def test_gru_wrong_hidden_size_names_tensor():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "gru", hidden_size=257)

    assert "gru.weight_ih_l0" in message
    assert "(300, 7)" in message
    assert "(771, 7)" in message
    assert "set hidden_size to 100" in message


def test_gru_wrong_input_size_names_tensor():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "gru", input_size=300)

    assert "gru.weight_ih_l0" in message
    assert "(300, 7)" in message
    assert "(300, 300)" in message
    assert "dimension 7" in message


def test_gru_too_many_layers_requested():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "gru", num_layers=3)

    assert "gru.weight_ih_l2: missing" in message
    assert "(300, 100)" in message
    assert "num_layers=3" in message
    assert "has 2 layers" in message


def test_gru_too_few_layers_requested():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "gru", num_layers=1)

    assert "gru.weight_ih_l1: unexpected" in message
    assert "(300, 100)" in message
    assert "num_layers=1" in message
    assert "has 2 layers" in message


def test_gru_missing_key_names_tensor():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()
    del state_dict["gru.bias_hh_l1"]

    message = conversion_error(conversion.params_from_torch, state_dict, "gru")

    assert "gru.bias_hh_l1: missing" in message
    assert "(300,)" in message


def test_gru_inconsistent_shape_names_tensor():
    state_dict = TorchGRUClassifier(7, 100, 2).state_dict()
    state_dict["gru.weight_hh_l1"] = torch.zeros(300, 99)

    message = conversion_error(conversion.params_from_torch, state_dict, "gru")

    assert "gru.weight_hh_l1" in message
    assert "(300, 99)" in message
    assert "(300, 100)" in message
    assert "gru.weight_hh_l0 gives hidden_size 100" in message


def test_gru_bidirectional_rejected():
    state_dict = nn_state({"gru": torch.nn.GRU(7, 5, bidirectional=True), "fc": torch.nn.Linear(5, 2)})

    message = conversion_error(conversion.params_from_torch, state_dict, "gru")

    assert "gru.bias_hh_l0_reverse: unexpected" in message
    assert "Bidirectional" in message


def test_gru_checkpoint_as_pmgru_rejected():
    state_dict = TorchGRUClassifier(7, 5, 1).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru")

    assert "set cell to gru" in message


def test_pmgru_checkpoint_as_gru_rejected():
    state_dict = TorchPmGRUClassifier(7, 5).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "gru")

    assert "set cell to pmgru" in message


def test_pmgru_wrong_hidden_size_names_tensor():
    state_dict = TorchPmGRUClassifier(7, 100).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru", hidden_size=257)

    assert "project1.weight" in message
    assert "(100, 107)" in message
    assert "(257, 264)" in message
    assert "set hidden_size to 100" in message


def test_pmgru_wrong_input_size_names_tensor():
    state_dict = TorchPmGRUClassifier(7, 100).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru", input_size=300)

    assert "project1.weight" in message
    assert "(100, 107)" in message
    assert "(100, 400)" in message
    assert "dimension 7" in message


def test_pmgru_layer_count_rejected():
    state_dict = TorchPmGRUClassifier(7, 100).state_dict()

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru", num_layers=2)

    assert "project1.weight" in message
    assert "num_layers=2" in message
    assert "set num_layers to 1" in message


def test_pmgru_missing_key_names_tensor():
    state_dict = TorchPmGRUClassifier(7, 100).state_dict()
    del state_dict["project2.bias"]

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru")

    assert "project2.bias: missing" in message
    assert "(100,)" in message


def test_pmgru_extra_layer_rejected():
    state_dict = TorchPmGRUClassifier(7, 100).state_dict()
    state_dict["project3.weight"] = torch.zeros(1, 100)

    message = conversion_error(conversion.params_from_torch, state_dict, "pmgru")

    assert "project3.weight: unexpected" in message
    assert "(1, 100)" in message


def test_integer_tensor_rejected():
    state_dict = TorchGRUClassifier(7, 5, 1).state_dict()
    state_dict["fc.bias"] = torch.zeros(2, dtype=torch.int64)

    message = conversion_error(conversion.params_from_torch, state_dict, "gru")

    assert "fc.bias" in message
    assert "int64" in message


def test_unknown_cell_rejected():
    state_dict = TorchGRUClassifier(7, 5, 1).state_dict()

    with pytest.raises(ConfigError, match="lstm"):
        conversion.params_from_torch(state_dict, "lstm")


def test_check_params_match_embedding_dimension():
    params = conversion.params_from_torch(TorchGRUClassifier(7, 100, 2).state_dict(), "gru")

    message = conversion_error(conversion.check_params_match, params, "gru", input_size=50, hidden_size=100, num_layers=2)

    assert "rnn/layer_0/cell/input_kernel" in message
    assert "(7, 300)" in message
    assert "(50, 300)" in message
    assert "dimension 7" in message


def test_check_params_match_layer_count():
    params = conversion.params_from_torch(TorchGRUClassifier(7, 100, 2).state_dict(), "gru")

    message = conversion_error(conversion.check_params_match, params, "gru", num_layers=3)

    assert "rnn/layer_2/cell/input_kernel: missing" in message
    assert "(100, 300)" in message
    assert "have 2 layers" in message


def test_check_params_match_hidden_size():
    params = conversion.params_from_torch(TorchPmGRUClassifier(7, 100).state_dict(), "pmgru")

    message = conversion_error(conversion.check_params_match, params, "pmgru", hidden_size=64)

    assert "rnn/layer_0/cell/input_kernel" in message
    assert "(7, 200)" in message
    assert "(7, 128)" in message
    assert "set hidden_size to 100" in message


def test_check_params_match_wrong_cell():
    params = conversion.params_from_torch(TorchPmGRUClassifier(7, 100).state_dict(), "pmgru")

    message = conversion_error(conversion.check_params_match, params, "gru")

    assert "rnn/layer_0/cell/hidden_kernel: missing" in message
    assert "set cell to pmgru" in message


def test_check_params_match_missing_parameter():
    params = conversion.params_from_torch(TorchGRUClassifier(7, 100, 1).state_dict(), "gru")
    del params["params"]["head"]["bias"]

    message = conversion_error(conversion.check_params_match, params, "gru")

    assert "head/bias: missing" in message
    assert "(2,)" in message


def test_deep_pmgru_export_rejected():
    model = SentimentClassifier("pmgru", hidden_size=5, num_layers=2)
    # Shapes are all the check reads, so abstract parameters are enough.
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 7)), jnp.array([3]))

    message = conversion_error(conversion.params_to_torch, params, "pmgru")

    assert "rnn/layer_1" in message
    assert "num_layers=1" in message


def nn_state(modules):
    """Return the state dict of a module holding `modules` as named children."""
    return torch.nn.ModuleDict(modules).state_dict()
