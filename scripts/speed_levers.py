"""Measure each speed lever of gru_jax on its own, in one process, with the variants taking turns.

    python scripts/speed_levers.py --data DIR [--size 200] [--json FILE]

For each cell, every variant trains one epoch on the same batches (batch size 32) as a warm-up that
compiles it. The variants then take turns for --repeats epochs, and the table shows each one's median. Evaluation variants score the test archive the same way.

Training variants:
  scan, before       the recurrent layer as it was before the chunked loop: `flax.linen.scan` over
                     every padded step of the bucket length, gradients by JAX's autodiff, the gates
                     sliced from one array at each step, random batches of a bucket
  nn.scan layer      gru_jax's `--recurrent-loop scan`: `flax.linen.scan` over every padded step of the
                     batch, on the batches of `chunked`
  chunked            gru_jax now: chunks of 16 steps up to the batch's longest sequence, the
                     hand-written backward pass (`gru_jax.rnn`), batches cut from length-sorted pools
                     of 8 batches (`sort_pool`)
  random batches     the same on batches of random members of a bucket (sort pool 1)
  other gate layout  the same with each step's gate inputs passed the other way: sliced from one
                     projected array inside the loop for the GRU (as before the gate blocks), as
                     one array per gate for the pmGRU
  chunked, unroll U  the same with the scan inside a chunk unrolled U times
  chunked, chunk C   the same with chunks of C steps
  no donation        params and optimizer state not donated to the step
  sync every step    the loss read back after every step instead of every 50
Evaluation variants:
  direct             word vectors looked up and multiplied by the first layer's input weights
  projected table    the table projected once, then rows looked up (what `predict_log_probs` does)
  batch B            the projected table at B reviews per batch

Step anatomy: the forward pass of one recurrent step (`cell.step`) in a compiled loop of 512 steps,
at batch sizes 32 and 256. It is timed given one array per gate, as the layers give it, and given the
gates in one array. The step's recurrent matrix products alone in the same loop are timed too, and the
difference is the gate arithmetic (sigmoid, tanh, products) and the loop's own work.

It also reports the host time to build one epoch's padded batches, and the rate of XLA's matrix
products on this machine: a large one ([8192, 300] x [300, 300], the shape of an input projection)
and the small one of a recurrent step ([32, 100] x [100, 300]) repeated in a compiled loop. With the
multiply-adds per token of `multiply_adds_per_token`, this bounds the throughput any framework can
reach with the same model.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "scripts")]

from benchmark import HIDDEN_SIZE, LEARNING_RATE, MOMENTUM, NUM_LAYERS, limit_threads, prepare  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory with sentiment_dataset_{train,test}_N.tar.gz")
    parser.add_argument("--size", default="200", help="archive size N (default 200)")
    parser.add_argument("--cells", default="gru,pmgru", help="cells, comma-separated (default gru,pmgru)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per variant (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for XLA (default 1)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "gru_jax_benchmark"),
                        help="word2vec cache (default %(default)s)")
    parser.add_argument("--json", help="write the measurements to this JSON file")
    return parser


def scan_classifier(cell, hidden_size, num_layers):
    """Build the classifier with the recurrent layer as it was before the chunked loop, with the same parameters."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gru_jax.cells import CELLS

    def masked_step(cell_module, carry, step_inputs):
        projected, mask = step_inputs
        updated = cell_module(carry, projected)
        keep = mask[:, None]
        return jnp.where(keep, updated, carry), jnp.where(keep, updated, 0.0)

    class ScanLayer(nn.Module):
        cell: str
        hidden_size: int

        @nn.compact
        def __call__(self, inputs, mask):
            cell_module = CELLS[self.cell](input_size=inputs.shape[-1], hidden_size=self.hidden_size, name="cell")
            projected = cell_module.project_inputs(inputs)
            carry = jnp.zeros((inputs.shape[1], self.hidden_size), projected.dtype)
            scan = nn.scan(masked_step, variable_broadcast="params", split_rngs={"params": False})
            return scan(cell_module, carry, (projected, mask))

    class ScanStack(nn.Module):
        cell: str
        hidden_size: int
        num_layers: int

        @nn.compact
        def __call__(self, inputs, mask):
            outputs = inputs
            for index in range(self.num_layers):
                carry, outputs = ScanLayer(self.cell, self.hidden_size, name=f"layer_{index}")(outputs, mask)
            return carry

    class ScanClassifier(nn.Module):
        """Same parameter tree as `SentimentClassifier`: rnn/layer_k/cell and head."""

        cell: str
        hidden_size: int
        num_layers: int

        @nn.compact
        def __call__(self, inputs, lengths):
            mask = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]
            carry = ScanStack(self.cell, self.hidden_size, self.num_layers, name="rnn")(jnp.swapaxes(inputs, 0, 1),
                                                                                       mask.T)
            head = nn.Dense(2, name="head")
            return jax.nn.log_softmax(head(nn.relu(carry)))

    return ScanClassifier(cell, hidden_size, num_layers)


def multiply_adds_per_token(cell, training):
    """Multiply-adds of the matrix products per real token, input 300, hidden 100, DLStudio's layers.

    Training counts the forward pass and the backward pass without the cotangent of the word vectors,
    which no framework computes for a fixed table. Evaluation counts the forward pass from a projected
    table, so without the first layer's input product.
    """
    input_size, hidden = 300, HIDDEN_SIZE
    if cell == "gru":
        first_input, recurrent, second_input = input_size * 3 * hidden, hidden * 3 * hidden, hidden * 3 * hidden
        if training:
            # Input products: forward and weight gradient, plus the input cotangent for layer 2. Recurrent
            # products: forward, carry cotangent and weight gradient.
            return 2 * first_input + 3 * recurrent + 3 * second_input + 3 * recurrent
        return recurrent + second_input + recurrent
    first_input, recurrent = input_size * 2 * hidden, 2 * hidden * hidden
    return 2 * first_input + 3 * recurrent if training else recurrent


def gemm_rates(repeats=20):
    """Return XLA's GFLOP/s for a large product and for a small product repeated in a compiled loop."""
    import jax
    import jax.numpy as jnp

    large_left = jnp.ones((8192, 300), jnp.float32)
    large_right = jnp.full((300, 300), 1e-3, jnp.float32)
    small_left = jnp.ones((32, 100), jnp.float32)
    small_right = jnp.full((100, 300), 1e-3, jnp.float32)
    large = jax.jit(lambda left, right: left @ right)
    loop_steps = 256

    @jax.jit
    def small(left, right):
        return jax.lax.fori_loop(0, loop_steps, lambda _, carry: jnp.tanh(carry @ right)[:, :100], left)

    rates = {}
    for name, function, arguments, flops in (
            ("large", large, (large_left, large_right), 2 * 8192 * 300 * 300),
            ("small_in_loop", small, (small_left, small_right), 2 * 32 * 100 * 300 * loop_steps)):
        jax.block_until_ready(function(*arguments))
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(function(*arguments))
            seconds.append(time.perf_counter() - started)
        rates[name] = flops / statistics.median(seconds) / 1e9
    return rates


def step_anatomy(cell, batch_size, steps=512, repeats=7):
    """Return microseconds per step of the forward step, given gate blocks or one array, and of its recurrent products alone."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gru_jax.cells import CELLS, gate_blocks

    rng = np.random.default_rng(0)

    def random(*shape):
        return jnp.asarray(rng.normal(scale=0.1, size=shape), jnp.float32)

    hidden = HIDDEN_SIZE
    if cell == "gru":
        params = {"input_kernel": random(300, 3 * hidden), "input_bias": random(3 * hidden),
                  "hidden_kernel": random(hidden, 3 * hidden), "hidden_bias": random(3 * hidden)}

        def products(carry):
            return (carry @ params["hidden_kernel"])[:, :hidden]
    else:
        params = {"input_kernel": random(300, 2 * hidden), "bias": random(2 * hidden),
                  "forget_hidden_kernel": random(hidden, hidden), "candidate_hidden_kernel": random(hidden, hidden)}

        def products(carry):
            return (carry @ params["forget_hidden_kernel"]) @ params["candidate_hidden_kernel"]

    projected = random(steps, batch_size, params["input_kernel"].shape[1])
    carry = jnp.zeros((batch_size, hidden), jnp.float32)
    step = CELLS[cell].step
    full = jax.jit(lambda projected: jax.lax.scan(
        lambda carry, step_input: (step(params, carry, step_input)[0], None), carry,
        gate_blocks(projected, CELLS[cell].num_gates))[0])
    sliced = jax.jit(lambda projected: jax.lax.scan(
        lambda carry, step_input: (step(params, carry, step_input)[0], None), carry, projected)[0])
    # The products alone, on a carry that changes each step as in the real loop.
    alone = jax.jit(lambda projected: jax.lax.scan(
        lambda carry, step_input: (products(carry) * 0.5 + step_input[:, :hidden], None), carry, projected)[0])
    timings = {}
    for name, function in (("full_step", full), ("full_step_sliced", sliced), ("products_alone", alone)):
        jax.block_until_ready(function(projected))
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(function(projected))
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds) / steps * 1e6
    return timings


def other_gate_layout(cell):
    """Register a copy of `cell` whose loops pass the gates the other way, and return its name.

    The GRU's loops pass `step` one array per gate and the pmGRU's one array with all gates
    (`loop_gate_blocks`), and the copy does the opposite. A class of its own keeps JAX from reusing the
    loops it traced for the cell itself.
    """
    from gru_jax.cells import CELLS

    name = f"{cell}-other-gate-layout"
    base = CELLS[cell]
    CELLS[name] = type(f"{base.__name__}OtherGateLayout", (base,), {"loop_gate_blocks": not base.loop_gate_blocks})
    return name


def make_step(model, optimizer, donate=True, lookup_in_loop=True):
    import jax
    import optax

    from gru_jax.classifier import embed
    from gru_jax.training import nll_loss

    def loss_fn(params, table, token_ids, lengths, labels, weights):
        if lookup_in_loop:
            log_probs = model.apply(params, table, lengths, token_ids=token_ids)
        else:
            log_probs = model.apply(params, embed(table, token_ids), lengths)
        return nll_loss(log_probs, labels, weights)

    def train_step(params, opt_state, table, arrays):
        loss, grads = jax.value_and_grad(loss_fn)(params, table, *arrays)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1) if donate else ())


def main(argv=None):
    args = build_parser().parse_args(argv)
    limit_threads(args.threads)
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np

    from gru_jax.batching import BucketedBatcher
    from gru_jax.classifier import SentimentClassifier
    from gru_jax.config import TrainConfig
    from gru_jax.training import batch_arrays, init_params, make_optimizer, make_predict, predict_log_probs

    spec = {"data": args.data, "size": args.size, "word2vec_epochs": 1, "cache_dir": args.cache_dir}
    data, train_ids, train_labels = prepare(spec)
    table = jax.device_put(data.table)
    real_tokens = sum(len(ids) for ids in train_ids)
    test_tokens = sum(len(ids) for ids in data.test_encoded.token_ids)
    batcher = BucketedBatcher(train_ids, train_labels, 32, 65536, sort_pool=TrainConfig().sort_pool)
    random_batcher = BucketedBatcher(train_ids, train_labels, 32, 65536, sort_pool=1)

    started = time.perf_counter()
    batches = list(batcher.batches(np.random.default_rng(0)))
    host_seconds = time.perf_counter() - started
    new_arrays = [batch_arrays(batch) for batch in batches]
    random_batches = list(random_batcher.batches(np.random.default_rng(0)))
    random_arrays = [batch_arrays(batch) for batch in random_batches]
    # The layout before the chunked loop: each batch padded to its own bucket's length.
    bucket_arrays = []
    for batch in random_batches:
        real = batch.lengths[batch.weights > 0]
        length = batcher.buckets[int(np.searchsorted(batcher.buckets, real.max()))]
        bucket_arrays.append((batch.token_ids[:, :length], batch.lengths, batch.labels, batch.weights))

    results = {"size": args.size, "threads": args.threads, "host_seconds_per_epoch": host_seconds,
               "load_average_before": list(os.getloadavg()),
               "batches": len(batches), "cells": {}, "gemm_gflops": gemm_rates(),
               "multiply_adds_per_token": {cell: {"training": multiply_adds_per_token(cell, True),
                                                  "evaluation": multiply_adds_per_token(cell, False)}
                                           for cell in NUM_LAYERS}}
    optimizer = make_optimizer(LEARNING_RATE, MOMENTUM)
    for cell in args.cells.split(","):
        num_layers = NUM_LAYERS[cell]

        def chunked(unroll=1, chunk_length=16, loop="chunked"):
            return SentimentClassifier(cell, HIDDEN_SIZE, num_layers, unroll=unroll, chunk_length=chunk_length,
                                       loop=loop)

        variants = {
            "scan, before": (make_step(scan_classifier(cell, HIDDEN_SIZE, num_layers), optimizer, lookup_in_loop=False),
                             bucket_arrays, 50),
            "nn.scan layer": (make_step(chunked(loop="scan"), optimizer), new_arrays, 50),
            "chunked": (make_step(chunked(), optimizer), new_arrays, 50),
            "random batches": (make_step(chunked(), optimizer), random_arrays, 50),
            "other gate layout": (make_step(SentimentClassifier(other_gate_layout(cell), HIDDEN_SIZE, num_layers),
                                            optimizer), new_arrays, 50),
            "chunked, unroll 2": (make_step(chunked(unroll=2), optimizer), new_arrays, 50),
            "chunked, unroll 4": (make_step(chunked(unroll=4), optimizer), new_arrays, 50),
            "chunked, chunk 8": (make_step(chunked(chunk_length=8), optimizer), new_arrays, 50),
            "chunked, chunk 32": (make_step(chunked(chunk_length=32), optimizer), new_arrays, 50),
            "no donation": (make_step(chunked(), optimizer, donate=False), new_arrays, 50),
            "sync every step": (make_step(chunked(), optimizer), new_arrays, 1),
        }
        params = init_params(chunked(), data.input_size, 0)
        states = {name: [jax.tree.map(np.array, params), optimizer.init(params)] for name in variants}

        def run_epoch(name):
            step, arrays_list, sync_every = variants[name]
            state = states[name]
            pending = []
            started = time.perf_counter()
            for arrays in arrays_list:
                state[0], state[1], loss = step(state[0], state[1], table, arrays)
                pending.append(loss)
                if len(pending) >= sync_every:
                    np.asarray(jax.device_get(pending))
                    pending = []
            jax.block_until_ready(state[0])
            return time.perf_counter() - started

        first = {}
        for name in variants:
            print(f"{cell}: warming up {name}", file=sys.stderr, flush=True)
            first[name] = run_epoch(name)
        seconds = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name in variants:
                seconds[name].append(run_epoch(name))
        training = {name: {"first_epoch_seconds": first[name], "seconds": seconds[name],
                           "tokens_per_second": real_tokens / statistics.median(seconds[name])}
                    for name in variants}

        model = chunked()
        predict = make_predict(model)
        trained = states["chunked"][0]

        def direct(batch_size):
            eval_batcher = BucketedBatcher(data.test_encoded.token_ids, np.zeros(len(data.test_encoded.token_ids)),
                                           batch_size, 65536)
            return lambda: [np.asarray(predict(trained, table, batch.token_ids, batch.lengths))
                            for batch in eval_batcher.batches()]

        def projected(batch_size):
            return lambda: predict_log_probs(predict, trained, table, data.test_encoded, batch_size,
                                             max(65536, batch_size * 128))

        eval_variants = {"direct, batch 256": direct(256), "projected table, batch 256": projected(256)}
        for batch_size in (64, 1024):
            eval_variants[f"projected table, batch {batch_size}"] = projected(batch_size)
        for function in eval_variants.values():
            function()
        eval_seconds = {name: [] for name in eval_variants}
        for _ in range(args.repeats):
            for name, function in eval_variants.items():
                started = time.perf_counter()
                function()
                eval_seconds[name].append(time.perf_counter() - started)
        evaluation = {name: {"seconds": values, "tokens_per_second": test_tokens / statistics.median(values)}
                      for name, values in eval_seconds.items()}
        anatomy = {str(batch_size): step_anatomy(cell, batch_size) for batch_size in (32, 256)}
        results["cells"][cell] = {"training": training, "evaluation": evaluation, "step_anatomy_us": anatomy}

    results["load_average_after"] = list(os.getloadavg())
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def format_table(results):
    lines = [f"Archive {results['size']}, {results['threads']} thread(s); tokens/s are real (unpadded) tokens, "
             f"medians of the timed epochs. Load average {results['load_average_before'][0]:.1f} before, "
             f"{results['load_average_after'][0]:.1f} after."]
    for cell, measured in results["cells"].items():
        reference = measured["training"]["chunked"]["tokens_per_second"]
        lines += ["", f"{cell} training{'':<22} {'tokens/s':>9} {'vs chunked':>10} {'first epoch s':>13}"]
        for name, entry in measured["training"].items():
            lines.append(f"  {name:<30} {entry['tokens_per_second']:>9.0f} {entry['tokens_per_second'] / reference:>9.2f}x "
                         f"{entry['first_epoch_seconds']:>13.1f}")
        reference = measured["evaluation"]["projected table, batch 256"]["tokens_per_second"]
        lines += [f"{cell} evaluation{'':<20} {'tokens/s':>9} {'vs projected, 256':>17}"]
        for name, entry in measured["evaluation"].items():
            lines.append(f"  {name:<30} {entry['tokens_per_second']:>9.0f} {entry['tokens_per_second'] / reference:>16.2f}x")
    lines += ["", "Forward step in a compiled loop (microseconds per step):"]
    for cell, measured in results["cells"].items():
        for batch_size, timing in measured["step_anatomy_us"].items():
            lines.append(f"  {cell} batch {batch_size}: full step given one array per gate {timing['full_step']:.0f}, "
                         f"given the gates in one array {timing['full_step_sliced']:.0f}; recurrent products alone "
                         f"{timing['products_alone']:.0f}")
    lines += ["", f"Host time to build one epoch's {results['batches']} padded batches: "
                  f"{results['host_seconds_per_epoch'] * 1e3:.0f} ms"]
    rates = results["gemm_gflops"]
    lines.append(f"XLA matrix products: {rates['large']:.1f} GFLOP/s large, {rates['small_in_loop']:.1f} GFLOP/s "
                 "small in a loop")
    for cell, counts in results["multiply_adds_per_token"].items():
        measured = results["cells"].get(cell)
        if measured is None:
            continue
        achieved = 2 * counts["training"] * measured["training"]["chunked"]["tokens_per_second"] / 1e9
        lines.append(f"  {cell}: {counts['training'] / 1e3:.0f}k multiply-adds per real token in training, "
                     f"{counts['evaluation'] / 1e3:.0f}k in evaluation; chunked training reaches {achieved:.1f} GFLOP/s "
                     "on real tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
