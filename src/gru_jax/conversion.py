"""Conversion between PyTorch state dicts and gru_jax parameters.

Two PyTorch layouts are supported:

* GRU, as DLStudio's `GRUnetWithEmbeddings`: `gru = nn.GRU(input_size, hidden_size, num_layers)` and
  `fc = nn.Linear(hidden_size, num_classes)`, with keys `gru.weight_ih_l{k}`, `gru.weight_hh_l{k}`, `gru.bias_ih_l{k}`, `gru.bias_hh_l{k}`,
  `fc.weight` and `fc.bias`.
* pmGRU, a classifier around DLStudio's pmGRU cell: `project1` and `project2 = nn.Linear(input_size +
  hidden_size, hidden_size)`, applied to `[x; h]` and `[x; f * h]`, and `fc`, with keys `project1.weight`, `project1.bias`, `project2.weight`,
  `project2.bias`, `fc.weight` and `fc.bias`. `project1.0.weight` (the linear layer inside an
  `nn.Sequential(nn.Linear, nn.Sigmoid)`) is read as `project1.weight`.

A `module.` prefix, as `nn.DataParallel` writes it, is removed from every key. The conversions only
transpose, slice and concatenate, so a float32 tensor comes back bit for bit after a round trip.

Every mismatch raises `CheckpointError` with the tensor's name, the shape found, the shape expected
and the setting to change. Names in these messages are PyTorch keys for state dicts and
'/'-separated paths such as `rnn/layer_0/cell/input_kernel` for gru_jax parameters.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from gru_jax.errors import CheckpointError, ConfigError

CELL_NAMES = ("gru", "pmgru")

_GRU_KEY = re.compile(r"^gru\.(weight|bias)_(ih|hh)_l(\d+)$")
_FLAX_LAYER_KEY = re.compile(r"^rnn/layer_(\d+)/")
_SEQUENTIAL_KEY = re.compile(r"^(project[12])\.0\.(weight|bias)$")
_DATA_PARALLEL_PREFIX = "module."

# Each cell's parameters, input kernel first and the [hidden_size, ...] kernel that gives hidden_size third.
_FLAX_CELL_PARAMS = {
    "gru": ("input_kernel", "input_bias", "hidden_kernel", "hidden_bias"),
    "pmgru": ("input_kernel", "bias", "forget_hidden_kernel", "candidate_hidden_kernel"),
}


class ModelSizes(NamedTuple):
    """The sizes that fix a classifier's parameter shapes."""

    input_size: int
    hidden_size: int
    num_layers: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class _Size:
    """One model size and where its value came from.

    `source` is None for a value the caller requested, else the tensor it was read from. `value` is
    None while it is unknown, and shapes that use it are then written symbolically.
    """

    name: str
    value: int | None
    source: str | None
    fix: str  # How to change the model to a given value, a template with a {value} field.


def _hidden_size(value, source=None):
    return _Size("hidden_size", value, source, "set hidden_size to {value}")


def _input_size(value, source=None):
    return _Size("input_size", value, source, "use word vectors of dimension {value}")


def _num_classes(value, source=None):
    return _Size("num_classes", value, source, "use a classifier with {value} classes")


# A dimension of an expected shape is a sum of terms (multiple, size), e.g. 3 * hidden_size, or
# input_size + hidden_size. When a dimension does not match, its last term is the size reported.
def _dim(size, multiple=1):
    return ((multiple, size),)


def _dim_value(dim):
    if any(size.value is None for _, size in dim):
        return None
    return sum(multiple * size.value for multiple, size in dim)


def _dim_text(dim):
    value = _dim_value(dim)
    if value is not None:
        return str(value)
    terms = [size.name if multiple == 1 else f"{multiple} * {size.name}" for multiple, size in dim]
    return " + ".join(terms)


def _shape_text(dims):
    texts = [_dim_text(dim) for dim in dims]
    return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"


def _mismatch_hint(dim, found):
    """Return the sentence that names the size to change, or says that the tensors disagree, for a mismatched `dim`."""
    multiple, size = dim[-1]
    rest = sum(term_multiple * term_size.value for term_multiple, term_size in dim[:-1])
    implied, remainder = divmod(found - rest, multiple)
    if size.source is not None:
        return (
            f"{size.source} gives {size.name} {size.value}, so the checkpoint's tensors disagree. "
            "Export the checkpoint again from a single model."
        )
    if remainder or implied < 1:
        return f"The checkpoint does not match {size.name} {size.value}."
    fix = size.fix.format(value=implied)
    return (
        f"The checkpoint has {size.name} {implied}, not {size.value}, so {fix}, or load a checkpoint "
        "that matches the model."
    )


def _check_shape(name, array, dims):
    """Raise unless `array` has the shape `dims`. Dimensions whose size is still unknown are not compared."""
    found = tuple(array.shape)
    expected = _shape_text(dims)
    if len(found) != len(dims):
        raise CheckpointError(
            f"{name}: found shape {found}, expected {expected}. The tensor is {len(found)}-D instead of "
            f"{len(dims)}-D, so the checkpoint does not have the expected layout."
        )
    for dim, found_value in zip(dims, found):
        expected_value = _dim_value(dim)
        if expected_value is not None and found_value != expected_value:
            raise CheckpointError(f"{name}: found shape {found}, expected {expected}. {_mismatch_hint(dim, found_value)}")


def _read_size(arrays, name, axis, make_size, requested, subtract=0):
    """Return `requested` as a size, or else read it from `arrays[name].shape[axis]` minus `subtract`.

    The value stays None when the tensor is missing or not 2-D, or when `subtract` is None. The key and
    shape checks then report that tensor.
    """
    if requested is not None:
        return make_size(int(requested))
    array = arrays.get(name)
    if array is None or array.ndim != 2 or subtract is None:
        return make_size(None, name)
    value = int(array.shape[axis]) - subtract
    if value < 1:
        raise CheckpointError(
            f"{name}: found shape {tuple(array.shape)}, which gives {make_size(None).name} {value}. "
            "Each size must be at least 1."
        )
    return make_size(value, name)


def _to_float32(name, value):
    """Copy a tensor or array to a float32 numpy array, so that later changes to `value` do not leak in."""
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if not tensor.is_floating_point():
            raise CheckpointError(f"{name}: found dtype {tensor.dtype}, expected a floating-point tensor.")
        return np.array(tensor.float().numpy(), dtype=np.float32, copy=True)
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise CheckpointError(f"{name}: found dtype {array.dtype}, expected a floating-point array.")
    return np.array(array, dtype=np.float32, copy=True)


def _check_cell(cell):
    if cell not in CELL_NAMES:
        raise ConfigError(f"cell: invalid value {cell!r}. Use one of {', '.join(CELL_NAMES)}.")


def _normalize_keys(state_dict, cell):
    """Return the state dict's arrays under canonical keys: no `module.` prefix, no `.0.` for pmGRU."""
    arrays = {}
    original_keys = {}
    for key, value in state_dict.items():
        canonical = key.removeprefix(_DATA_PARALLEL_PREFIX)
        if cell == "pmgru":
            canonical = _SEQUENTIAL_KEY.sub(r"\1.\2", canonical)
        if canonical in arrays:
            raise CheckpointError(
                f"{key}: names the same tensor as {original_keys[canonical]} ({canonical}). Keep only one of them."
            )
        arrays[canonical] = _to_float32(key, value)
        original_keys[canonical] = key
    return arrays


def _check_keys(arrays, specs, layout):
    """Raise for the first unexpected key, then for the first missing one, then for the first bad shape."""
    unexpected = sorted(arrays.keys() - specs.keys())
    if unexpected:
        name = unexpected[0]
        hint = " Bidirectional GRUs are not supported." if name.endswith("_reverse") else ""
        raise CheckpointError(
            f"{name}: unexpected tensor of shape {tuple(arrays[name].shape)} in a {layout}.{hint} "
            f"Expected only {', '.join(specs)}."
        )

    for name, dims in specs.items():
        if name not in arrays:
            raise CheckpointError(
                f"{name}: missing, expected shape {_shape_text(dims)}. Pass the complete parameters of a {layout}."
            )

    # A size is unknown here only when the tensor it is read from is not 2-D, and checking that tensor raises.
    for name, dims in specs.items():
        _check_shape(name, arrays[name], dims)


def _check_layer_count(arrays, layer_names, found, requested, specs, where):
    """Raise when a requested layer count differs from the `found` one, naming the first differing tensor.

    `layer_names(k)` lists the tensor names of layer k, `specs` has the shapes for the larger count, and
    `where` starts the sentence that gives the found count ("The checkpoint has").
    """
    if requested is None or requested == found:
        return
    if requested < 1:
        raise ConfigError(f"num_layers: invalid value {requested}. Use at least 1.")

    name = layer_names(min(found, requested))[0]
    if requested > found:
        problem = f"missing, expected shape {_shape_text(specs[name])}"
    else:
        problem = f"unexpected tensor of shape {tuple(arrays[name].shape)}"
    raise CheckpointError(
        f"{name}: {problem} for num_layers={requested}. {where} {found} layers, so set num_layers to "
        f"{found}, or load a checkpoint that matches the model."
    )


def _gru_torch_names(layer):
    return [f"gru.weight_ih_l{layer}", f"gru.weight_hh_l{layer}", f"gru.bias_ih_l{layer}", f"gru.bias_hh_l{layer}"]


def _gru_torch_specs(num_layers, input_size, hidden_size, num_classes):
    specs = {}
    for layer in range(num_layers):
        weight_ih, weight_hh, bias_ih, bias_hh = _gru_torch_names(layer)
        layer_input = input_size if layer == 0 else hidden_size
        specs[weight_ih] = (_dim(hidden_size, 3), _dim(layer_input))
        specs[weight_hh] = (_dim(hidden_size, 3), _dim(hidden_size))
        specs[bias_ih] = (_dim(hidden_size, 3),)
        specs[bias_hh] = (_dim(hidden_size, 3),)
    specs["fc.weight"] = (_dim(num_classes), _dim(hidden_size))
    specs["fc.bias"] = (_dim(num_classes),)
    return specs


def _pmgru_torch_specs(input_size, hidden_size, num_classes):
    combined = _dim(hidden_size) + _dim(input_size)
    return {
        "project1.weight": (_dim(hidden_size), combined),
        "project1.bias": (_dim(hidden_size),),
        "project2.weight": (_dim(hidden_size), combined),
        "project2.bias": (_dim(hidden_size),),
        "fc.weight": (_dim(num_classes), _dim(hidden_size)),
        "fc.bias": (_dim(num_classes),),
    }


def _flax_names(cell, layer):
    return [f"rnn/layer_{layer}/cell/{name}" for name in _FLAX_CELL_PARAMS[cell]]


def _flax_specs(cell, num_layers, input_size, hidden_size, num_classes):
    specs = {}
    gates = 3 if cell == "gru" else 2
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size
        names = _flax_names(cell, layer)
        specs[names[0]] = (_dim(layer_input), _dim(hidden_size, gates))
        if cell == "gru":
            specs[names[1]] = (_dim(hidden_size, 3),)
            specs[names[2]] = (_dim(hidden_size), _dim(hidden_size, 3))
            specs[names[3]] = (_dim(hidden_size, 3),)
        else:
            specs[names[1]] = (_dim(hidden_size, 2),)
            specs[names[2]] = (_dim(hidden_size), _dim(hidden_size))
            specs[names[3]] = (_dim(hidden_size), _dim(hidden_size))
    specs["head/kernel"] = (_dim(hidden_size), _dim(num_classes))
    specs["head/bias"] = (_dim(num_classes),)
    return specs


def gru_cell_from_torch(weight_ih, weight_hh, bias_ih, bias_hh):
    """Convert one `nn.GRU` layer to `GRUCell` parameters.

    Args:
      weight_ih: <float32>[3 * hidden_size, input_size], `weight_ih_l{k}`.
      weight_hh: <float32>[3 * hidden_size, hidden_size], `weight_hh_l{k}`.
      bias_ih: <float32>[3 * hidden_size], `bias_ih_l{k}`.
      bias_hh: <float32>[3 * hidden_size], `bias_hh_l{k}`.

    Returns:
      A dict of numpy arrays: input_kernel, input_bias, hidden_kernel and hidden_bias. Shapes are not
      checked here; `params_from_torch` checks them.
    """
    return {
        "input_kernel": np.ascontiguousarray(np.asarray(weight_ih).T),
        "input_bias": np.array(bias_ih),
        "hidden_kernel": np.ascontiguousarray(np.asarray(weight_hh).T),
        "hidden_bias": np.array(bias_hh),
    }


def gru_cell_to_torch(cell_params):
    """Convert `GRUCell` parameters to one `nn.GRU` layer: (weight_ih, weight_hh, bias_ih, bias_hh) numpy arrays."""
    return (
        np.ascontiguousarray(np.asarray(cell_params["input_kernel"]).T),
        np.ascontiguousarray(np.asarray(cell_params["hidden_kernel"]).T),
        np.array(cell_params["input_bias"]),
        np.array(cell_params["hidden_bias"]),
    )


def pmgru_cell_from_torch(project1_weight, project1_bias, project2_weight, project2_bias):
    """Convert DLStudio's pmGRU layers `project1` (forget gate) and `project2` (candidate) to `PmGRUCell` parameters.

    Args:
      project1_weight: <float32>[hidden_size, input_size + hidden_size], over `[x; h]`.
      project1_bias: <float32>[hidden_size].
      project2_weight: <float32>[hidden_size, input_size + hidden_size], over `[x; f * h]`.
      project2_bias: <float32>[hidden_size].

    Returns:
      A dict of numpy arrays: input_kernel, bias, forget_hidden_kernel and candidate_hidden_kernel.
      Shapes are not checked here; `params_from_torch` checks them.
    """
    project1_weight = np.asarray(project1_weight)
    project2_weight = np.asarray(project2_weight)
    hidden_size = project1_weight.shape[0]
    input_size = project1_weight.shape[1] - hidden_size
    input_kernel = np.concatenate([project1_weight[:, :input_size].T, project2_weight[:, :input_size].T], axis=1)
    return {
        "input_kernel": input_kernel,
        "bias": np.concatenate([np.asarray(project1_bias), np.asarray(project2_bias)]),
        "forget_hidden_kernel": np.ascontiguousarray(project1_weight[:, input_size:].T),
        "candidate_hidden_kernel": np.ascontiguousarray(project2_weight[:, input_size:].T),
    }


def pmgru_cell_to_torch(cell_params):
    """Convert `PmGRUCell` parameters to DLStudio's layers: a dict of numpy arrays keyed `project1.weight` etc."""
    input_kernel = np.asarray(cell_params["input_kernel"])
    bias = np.asarray(cell_params["bias"])
    hidden_size = input_kernel.shape[1] // 2
    forget_input, candidate_input = input_kernel[:, :hidden_size], input_kernel[:, hidden_size:]
    forget_hidden = np.asarray(cell_params["forget_hidden_kernel"])
    candidate_hidden = np.asarray(cell_params["candidate_hidden_kernel"])
    return {
        "project1.weight": np.concatenate([forget_input.T, forget_hidden.T], axis=1),
        "project1.bias": np.array(bias[:hidden_size]),
        "project2.weight": np.concatenate([candidate_input.T, candidate_hidden.T], axis=1),
        "project2.bias": np.array(bias[hidden_size:]),
    }


def _gru_params_from_arrays(arrays, num_layers, input_size, hidden_size):
    layers = sorted({int(match.group(3)) for match in map(_GRU_KEY.match, arrays) if match})
    if not layers:
        if any(name.startswith("project1.") for name in arrays):
            hint = "The keys are those of a pmGRU checkpoint, so set cell to pmgru."
        else:
            hint = "Pass the state_dict() of a GRU classifier."
        raise CheckpointError(f"gru.weight_ih_l0: missing, and so is every other gru.* tensor. {hint}")
    found_layers = layers[-1] + 1

    hidden = _read_size(arrays, "gru.weight_hh_l0", 1, _hidden_size, hidden_size)
    inputs = _read_size(arrays, "gru.weight_ih_l0", 1, _input_size, input_size)
    classes = _read_size(arrays, "fc.weight", 0, _num_classes, None)

    specs = _gru_torch_specs(max(found_layers, num_layers or 0), inputs, hidden, classes)
    _check_layer_count(arrays, _gru_torch_names, found_layers, num_layers, specs, "The checkpoint has")
    specs = _gru_torch_specs(found_layers, inputs, hidden, classes)
    _check_keys(arrays, specs, "GRU classifier checkpoint")

    rnn = {}
    for layer in range(found_layers):
        rnn[f"layer_{layer}"] = {"cell": gru_cell_from_torch(*(arrays[name] for name in _gru_torch_names(layer)))}
    return rnn


def _pmgru_params_from_arrays(arrays, num_layers, input_size, hidden_size):
    if "project1.weight" not in arrays and any(_GRU_KEY.match(name) for name in arrays):
        raise CheckpointError(
            "project1.weight: missing, but gru.* tensors are present. The keys are those of a GRU checkpoint, "
            "so set cell to gru."
        )
    if num_layers is not None and num_layers != 1:
        raise CheckpointError(
            f"project1.weight: found one pmGRU layer, expected num_layers={num_layers}. The PyTorch pmGRU "
            "layout has a single layer, so set num_layers to 1."
        )

    hidden = _read_size(arrays, "project1.weight", 0, _hidden_size, hidden_size)
    # The weight is [hidden_size, input_size + hidden_size], so its own row count splits the columns.
    weight = arrays.get("project1.weight")
    rows = weight.shape[0] if weight is not None and weight.ndim == 2 else None
    inputs = _read_size(arrays, "project1.weight", 1, _input_size, input_size, subtract=rows)
    classes = _read_size(arrays, "fc.weight", 0, _num_classes, None)

    specs = _pmgru_torch_specs(inputs, hidden, classes)
    _check_keys(arrays, specs, "pmGRU classifier checkpoint")

    cell_params = pmgru_cell_from_torch(
        arrays["project1.weight"], arrays["project1.bias"], arrays["project2.weight"], arrays["project2.bias"]
    )
    return {"layer_0": {"cell": cell_params}}


def params_from_torch(state_dict, cell, num_layers=None, *, input_size=None, hidden_size=None):
    """Convert a PyTorch classifier's state dict to `SentimentClassifier` parameters.

    Sizes are read from the tensors' shapes. Each of `num_layers`, `input_size` and `hidden_size`
    that is given must match them.

    Args:
      state_dict: mapping from PyTorch key to tensor or array, in one of the layouts in the module
        docstring. Floating-point tensors of other dtypes are cast to float32.
      cell: 'gru' or 'pmgru'.
      num_layers: expected number of recurrent layers, or None.
      input_size: expected input size (word-vector dimension), or None.
      hidden_size: expected hidden size, or None.

    Returns:
      `{'params': {'rnn': {'layer_k': {'cell': ...}}, 'head': {'kernel', 'bias'}}}` with float32 numpy
      arrays that share no memory with `state_dict`.

    Raises:
      CheckpointError: a key is missing or unexpected, or a shape differs from what the other tensors
        or the given sizes imply.
      ConfigError: `cell` is not 'gru' or 'pmgru', or `num_layers` is below 1.
    """
    _check_cell(cell)
    arrays = _normalize_keys(state_dict, cell)

    if cell == "gru":
        rnn = _gru_params_from_arrays(arrays, num_layers, input_size, hidden_size)
    else:
        rnn = _pmgru_params_from_arrays(arrays, num_layers, input_size, hidden_size)

    head = {"kernel": np.ascontiguousarray(arrays["fc.weight"].T), "bias": arrays["fc.bias"]}
    return {"params": {"rnn": rnn, "head": head}}


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def _inner_params(params):
    """Return the tree under 'params' when `params` is a variables dict, else `params` itself."""
    if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def check_params_match(params, cell, *, input_size=None, hidden_size=None, num_layers=None, num_classes=None):
    """Check that gru_jax parameters have the layout of a classifier with the given sizes.

    A size left as None is read from the parameters instead, and then only the parameters' consistency
    is checked. Use this on restored or converted parameters before building a model around them, for
    example with `input_size` set to the embedding table's dimension.

    Args:
      params: `SentimentClassifier` parameters, with or without the outer 'params' key; numpy or JAX arrays.
      cell: 'gru' or 'pmgru'.
      input_size, hidden_size, num_layers, num_classes: expected sizes, or None.

    Returns:
      The parameters' `ModelSizes`.

    Raises:
      CheckpointError: a parameter is missing or unexpected, or a shape differs from the given sizes
        or from what the other parameters imply.
      ConfigError: `cell` is not 'gru' or 'pmgru'.
    """
    _check_cell(cell)
    arrays = _flatten(_inner_params(params))
    for name, value in arrays.items():
        if not hasattr(value, "shape"):
            raise CheckpointError(f"{name}: found a {type(value).__name__}, expected an array.")

    other_cell = "pmgru" if cell == "gru" else "gru"
    own_name, other_name = _flax_names(cell, 0)[2], _flax_names(other_cell, 0)[2]
    if own_name not in arrays and other_name in arrays:
        raise CheckpointError(
            f"{own_name}: missing, but {other_name} is present. The parameters are those of a {other_cell} "
            f"model, so set cell to {other_cell}."
        )

    layers = sorted({int(match.group(1)) for match in map(_FLAX_LAYER_KEY.match, arrays) if match})
    found_layers = layers[-1] + 1 if layers else 0
    if found_layers == 0:
        raise CheckpointError(
            f"{_flax_names(cell, 0)[0]}: missing, and so is every other rnn/* parameter. Pass the parameters "
            "of a SentimentClassifier."
        )

    hidden = _read_size(arrays, own_name, 0, _hidden_size, hidden_size)
    inputs = _read_size(arrays, _flax_names(cell, 0)[0], 0, _input_size, input_size)
    classes = _read_size(arrays, "head/kernel", 1, _num_classes, num_classes)

    specs = _flax_specs(cell, max(found_layers, num_layers or 0), inputs, hidden, classes)
    _check_layer_count(arrays, lambda layer: _flax_names(cell, layer), found_layers, num_layers, specs, "The parameters have")
    specs = _flax_specs(cell, found_layers, inputs, hidden, classes)
    _check_keys(arrays, specs, f"{cell} SentimentClassifier")
    return ModelSizes(inputs.value, hidden.value, found_layers, classes.value)


def params_to_numpy(params, cell):
    """Convert `SentimentClassifier` parameters to a PyTorch-layout state dict of float32 numpy arrays.

    Keys are in the order of the reference modules' `state_dict()`. A pmGRU model must have one layer,
    because the PyTorch pmGRU layout has a single `project1`/`project2` pair.

    Args:
      params: `SentimentClassifier` parameters, with or without the outer 'params' key.
      cell: 'gru' or 'pmgru'.

    Returns:
      dict from PyTorch key to a C-contiguous float32 numpy array.

    Raises:
      CheckpointError: the parameters are incomplete or inconsistent, or a pmGRU model has more than one layer.
    """
    sizes = check_params_match(params, cell)
    inner = _inner_params(params)
    rnn = inner["rnn"]
    state = {}

    if cell == "gru":
        for layer in range(sizes.num_layers):
            arrays = gru_cell_to_torch(rnn[f"layer_{layer}"]["cell"])
            state.update(zip(_gru_torch_names(layer), arrays))
    else:
        if sizes.num_layers != 1:
            raise CheckpointError(
                f"rnn/layer_1: found {sizes.num_layers} pmGRU layers, expected 1. The PyTorch pmGRU layout has "
                "a single layer, so only a model with num_layers=1 can be exported to it."
            )
        state.update(pmgru_cell_to_torch(rnn["layer_0"]["cell"]))

    state["fc.weight"] = np.asarray(inner["head"]["kernel"]).T
    state["fc.bias"] = np.asarray(inner["head"]["bias"])
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()}


def params_to_torch(params, cell):
    """Convert `SentimentClassifier` parameters to a PyTorch state dict that loads with `strict=True`.

    Same as `params_to_numpy`, with each array wrapped as a float32 `torch.Tensor`. Imports torch,
    which gru_jax itself does not require.
    """
    import torch

    # torch.tensor copies, because arrays that come from JAX are read-only.
    return {key: torch.tensor(array) for key, array in params_to_numpy(params, cell).items()}
