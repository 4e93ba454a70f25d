"""Print how far gru_jax is from PyTorch, tensor by tensor, in float32 on CPU.

Usage:
  python scripts/parity_report.py [--json PATH]

It uses the same weights and batches as tests/test_parity.py. For each configuration it compares the
log-probabilities, the loss, the recurrent stack's final carry and per-step outputs (at real steps),
every gradient of the mean NLL loss, and every parameter after ten steps of SGD with momentum.

Each row gives the maximum absolute difference, the maximum relative difference, and the ratio of the
worst element's difference to the tests' bound atol + rtol * |expected| (below 1 passes). The relative
difference only counts elements with |expected| >= atol / rtol, where the relative part of that bound
is the larger one, because near zero it grows without meaning. "n/a" marks a tensor with no such element.

It imports the test helpers, so it needs pytest and torch (`pip install -e .[test]`); without an
installed gru_jax it uses src/ from this checkout.
"""

import argparse
import json
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "tests"))
try:
    import gru_jax  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPOSITORY / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import test_parity as parity  # noqa: E402
from gru_jax import conversion  # noqa: E402
from test_parity import Config  # noqa: E402
from torch_reference import run_stack_each  # noqa: E402

# gru_jax's defaults (2 GRU layers or 1 pmGRU layer, hidden size 100, 300-d word vectors) and deeper,
# wider or narrower variants. Deep pmGRU stacks have no PyTorch classifier, so only their stack is compared.
CONFIGS = [
    Config("gru", 2, 64, 100, 300),
    Config("gru", 3, 64, 257, 7),
    Config("gru", 1, 1, 1, 300),
    Config("pmgru", 1, 64, 100, 300),
    Config("pmgru", 1, 64, 257, 7),
    Config("pmgru", 3, 64, 257, 7),
]

ONE_PASS = "one forward or backward pass"
TRAINING = f"after {parity.SGD_STEPS} SGD steps"
TOLERANCES = {
    ONE_PASS: (parity.FORWARD_RTOL, parity.FORWARD_ATOL),
    TRAINING: (parity.TRAINING_RTOL, parity.TRAINING_ATOL),
}


def compare(name, actual, expected, kind):
    """Return a report row for one tensor: its name, its kind of comparison and how far `actual` is from `expected`."""
    rtol, atol = TOLERANCES[kind]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    difference = np.abs(actual - expected)
    magnitude = np.abs(expected)
    significant = magnitude >= atol / rtol
    relative = float(np.max(difference[significant] / magnitude[significant])) if significant.any() else None
    return {
        "tensor": name,
        "kind": kind,
        "max_abs": float(np.max(difference)),
        "max_rel": relative,
        "tolerance_ratio": float(np.max(difference / (atol + rtol * magnitude))),
    }


def compare_stack(config):
    batch = parity.make_batch(1, config.batch_size, config.input_size)
    torch_stack, rnn_params = parity.make_torch_stack(config)
    with torch.no_grad():
        torch_outputs, torch_final = run_stack_each(torch_stack, batch.torch_inputs(), batch.torch_lengths())

    final_carry, outputs = parity.run_jax_stack(config, rnn_params, batch)

    real_outputs = np.concatenate([outputs[:length, index] for index, length in enumerate(batch.lengths)])
    kind = ONE_PASS
    return [
        compare("final carry", final_carry, torch_final.numpy(), kind),
        compare("per-step outputs", real_outputs, torch.cat(torch_outputs).numpy(), kind),
    ]


def compare_classifier(config):
    batch = parity.make_batch(2, config.batch_size, config.input_size)
    model = parity.make_torch_classifier(config)
    params = conversion.params_from_torch(model.state_dict(), config.cell)

    torch_loss, torch_log_probs, torch_gradients = parity.run_torch_classifier(model, batch)
    loss, log_probs, gradients = parity.run_jax_classifier(config, params, batch)

    kind = ONE_PASS
    rows = [
        compare("log-probs", log_probs, torch_log_probs, kind),
        compare("loss", loss, torch_loss, kind),
    ]
    for name, gradient in gradients.items():
        rows.append(compare(f"gradient {name}", gradient, torch_gradients[name], kind))
    return rows


def compare_training(config):
    batches = [parity.make_batch(10 + step, config.batch_size, config.input_size) for step in range(parity.SGD_STEPS)]
    model = parity.make_torch_classifier(config)
    params = conversion.params_from_torch(model.state_dict(), config.cell)

    torch_final = parity.train_torch(model, batches)
    final = parity.train_jax(config, params, batches)

    kind = TRAINING
    return [
        compare(f"{name} after {parity.SGD_STEPS} SGD steps", value, torch_final[name], kind)
        for name, value in final.items()
    ]


def config_name(config):
    return f"{config.cell} layers={config.num_layers} batch={config.batch_size} hidden={config.hidden_size} input={config.input_size}"


def print_table(title, rows):
    width = max(len(row["tensor"]) for row in rows)
    print(f"\n{title}")
    print(f"  {'tensor':<{width}}  {'max abs':>10}  {'max rel':>10}  {'of tol':>7}")
    for row in rows:
        relative = "n/a" if row["max_rel"] is None else f"{row['max_rel']:.3e}"
        print(f"  {row['tensor']:<{width}}  {row['max_abs']:10.3e}  {relative:>10}  {row['tolerance_ratio']:7.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file (path)")
    arguments = parser.parse_args()

    # One PyTorch thread is faster here, because on small matrices its thread pool competes with XLA's.
    torch.set_num_threads(1)

    results = []
    for config in CONFIGS:
        rows = compare_stack(config)
        if config.cell == "gru" or config.num_layers == 1:
            rows += compare_classifier(config)
            if config.batch_size > 1:
                rows += compare_training(config)
        print_table(config_name(config), rows)
        results.extend({"config": config._asdict(), **row} for row in rows)

    for kind in (ONE_PASS, TRAINING):
        rows = [result for result in results if result["kind"] == kind]
        print(f"\nLargest differences over all configurations, {kind}:")
        for key, label in (("max_abs", "max abs"), ("max_rel", "max rel"), ("tolerance_ratio", "of tol")):
            worst = max(rows, key=lambda result: result[key] or 0.0)
            print(f"  {label:<8} {worst[key]:.3e}  {worst['tensor']}  ({config_name(Config(**worst['config']))})")

    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
