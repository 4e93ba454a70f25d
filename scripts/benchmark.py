"""Training and evaluation throughput of gru_jax against batched PyTorch and DLStudio's word-by-word loop.

    python scripts/benchmark.py --data DIR [--json FILE]

DIR contains DLStudio's sentiment_dataset_{train,test}_N.tar.gz archives. For each archive size
(--sizes) and each cell, with the same word vectors, model sizes and batch sizes, it measures:

* gru_jax: the training loop of `gru_jax.training.Trainer` (jitted step, donated buffers, losses read
  back every --log-every steps, batches from length-sorted pools of --sort-pool batches) without its
  checkpoints, and `predict_log_probs` for evaluation.
  The first epoch and the first evaluation include compilation and are reported apart. A second
  process then repeats them with the same persistent compilation cache, to show that it compiles
  nothing.
* PyTorch batched: the GRU as `nn.GRU` on padded, length-sorted batches, read at each sequence's last
  real step; the pmGRU as DLStudio's cell stepped over the padded batch with a mask (the reference
  modules of tests/torch_reference.py). Same batch sizes, SGD with momentum.
* DLStudio's way: batch size 1, one call of the whole network per word with the carry passed from
  call to call, one optimizer step per review, on the first --dlstudio-reviews reviews.

Each framework runs in its own process, so that its peak resident memory (ru_maxrss) is its own.
The processes take turns: one training pass of each, then the next pass of each, and the same for
evaluation, so that a change in the load of a shared machine affects all of them alike.
Throughput is the median over --epochs passes after a warm-up, in reviews/s and in real (unpadded)
tokens/s, and the ratios compare real tokens/s. The word vectors are in-corpus word2vec trained
with --word2vec-epochs epochs (1 by default, because their quality does not change throughput) and
cached in --cache-dir.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

FRAMEWORKS = ("gru_jax", "torch_batched", "dlstudio")
NUM_LAYERS = {"gru": 2, "pmgru": 1}
HIDDEN_SIZE = 100
LEARNING_RATE = 1e-3
MOMENTUM = 0.9
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
REPLY_PREFIX = "BENCHMARK-REPLY "


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="directory with sentiment_dataset_{train,test}_N.tar.gz (required)")
    parser.add_argument("--json", help="write every figure, ratios included, to this JSON file")
    parser.add_argument("--sizes", default="200,800", help="archive sizes N to measure, comma-separated (default 200,800)")
    parser.add_argument("--cells", default="gru,pmgru", help="cells to measure, comma-separated (default gru,pmgru)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default all)")
    parser.add_argument("--epochs", type=int, default=3, help="timed passes after the warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size of gru_jax and PyTorch (default 32)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    parser.add_argument("--dlstudio-reviews", type=int, default=48,
                        help="reviews that DLStudio's word-by-word loop trains on and scores (default 48)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads each framework may use with --device cpu (default 1); see docs/benchmarks.md")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="run JAX and PyTorch on the CPU or on the first GPU (default cpu)")
    parser.add_argument("--eval-batch-sizes", default="",
                        help="also measure evaluation throughput of gru_jax and PyTorch at these batch sizes, "
                        "comma-separated, e.g. 256,1024,4096 (default: none)")
    parser.add_argument("--word2vec-epochs", type=int, default=1, help="epochs of the in-corpus word2vec (default 1)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "gru_jax_benchmark"),
                        help="word2vec cache; compilation caches go to fresh directories (default %(default)s)")
    parser.add_argument("--log-every", type=int, default=50, help="gru_jax reads losses back every this many steps (default 50)")
    parser.add_argument("--unroll", type=int, default=1, help="gru_jax's scan unroll (default 1)")
    parser.add_argument("--sort-pool", type=int, default=None,
                        help="gru_jax's training batches come from pools of this many batches sorted by length "
                        "(default: gru_jax.train's default, 8)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


# ----------------------------------------------------------------------------------------------
# Worker side: one framework per process, driven by commands on stdin.


def limit_threads(threads):
    """Limit this process's CPU compute threads; call before importing jax or torch."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if threads == 1:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(spec):
    """Read the archives and build the table as `gru_jax.train` does, with the benchmark's word2vec settings."""
    from gru_jax.config import make_config
    from gru_jax.pipeline import prepare_data

    data_dir = Path(spec["data"])
    config = make_config(None, {
        "train_data": str(data_dir / f"sentiment_dataset_train_{spec['size']}.tar.gz"),
        "test_data": str(data_dir / f"sentiment_dataset_test_{spec['size']}.tar.gz"),
        "word2vec_epochs": spec["word2vec_epochs"],
        "cache_dir": spec["cache_dir"],
    })
    data = prepare_data(config)
    train_labels = data.train.labels[data.train_encoded.review_indices]
    return data, data.train_encoded.token_ids, train_labels


def count_tokens(token_ids):
    return int(sum(len(ids) for ids in token_ids))


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


class CompileMonitor:
    """Sums JAX's compile durations (tracing, lowering, XLA) and counts its persistent-cache events."""

    DURATIONS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                 "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        from jax import monitoring

        self.reset()
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)

    def reset(self):
        self.seconds = 0.0
        self.backend_seconds = 0.0
        self.backend_compiles = 0
        self.cache_misses = 0
        self.cache_hits = 0

    def _on_duration(self, event, duration, **kwargs):
        if event in self.DURATIONS:
            self.seconds += duration
        if event == "/jax/core/compile/backend_compile_duration":
            self.backend_compiles += 1
            self.backend_seconds += duration

    def _on_event(self, event, **kwargs):
        if event == "/jax/compilation_cache/cache_misses":
            self.cache_misses += 1
        elif event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def snapshot(self):
        return {"seconds": self.seconds, "backend_seconds": self.backend_seconds,
                "backend_compiles": self.backend_compiles, "cache_misses": self.cache_misses,
                "cache_hits": self.cache_hits}


def check_jax_backend(spec):
    import jax

    expected = "gpu" if spec["device"] == "gpu" else "cpu"
    if jax.default_backend() != expected:
        raise SystemExit(f"error: JAX runs on {jax.default_backend()}, but --device {spec['device']} was requested. "
                         "Install a CUDA build of jaxlib (e.g. pip install 'jax[cuda12]') for --device gpu.")


def jax_device_memory():
    """Return the device's peak allocation in MiB where the backend reports it (GPUs do, CPUs do not)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return {}
    return {"peak_device_mib": stats["peak_bytes_in_use"] / 2**20}


class GruJaxSession:
    """gru_jax's training loop and evaluation, as `Trainer` and `evaluate_encoded` run them."""

    def __init__(self, spec):
        from gru_jax.compilation_cache import enable_compilation_cache

        enable_compilation_cache(spec["compilation_cache"])
        self.monitor = CompileMonitor()

        import jax

        from gru_jax.batching import BucketedBatcher
        from gru_jax.config import TrainConfig
        from gru_jax.training import build_model, make_optimizer, make_predict, make_train_step

        check_jax_backend(spec)
        self.spec = spec
        self.data, self.train_ids, train_labels = prepare(spec)
        self.defaults = TrainConfig()
        self.model = build_model(spec["cell"], HIDDEN_SIZE, NUM_LAYERS[spec["cell"]], spec["unroll"])
        self.optimizer = make_optimizer(LEARNING_RATE, MOMENTUM)
        self.train_step = make_train_step(self.model, self.optimizer)
        self.predict = make_predict(self.model)
        self.table = jax.device_put(self.data.table)
        self.batcher = BucketedBatcher(self.train_ids, train_labels, spec["batch_size"], self.defaults.max_batch_tokens,
                                       self.defaults.min_bucket, self.defaults.bucket_growth,
                                       sort_pool=spec["sort_pool"])
        self.epoch = 0

    def warm_up_training(self):
        """Initialize and run the first epoch, which compiles every training shape."""
        import jax

        from gru_jax.training import init_params

        self.monitor.reset()
        started = time.perf_counter()
        self.params = init_params(self.model, self.data.input_size, 0)
        self.opt_state = jax.jit(self.optimizer.init)(self.params)
        jax.block_until_ready(self.opt_state)
        setup_seconds = time.perf_counter() - started
        setup_compile = self.monitor.snapshot()
        self.monitor.reset()
        epoch_seconds = timed(self._run_epoch)
        return {"setup_seconds": setup_seconds, "compile_setup": setup_compile, "first_epoch_seconds": epoch_seconds,
                "compile_first_epoch": self.monitor.snapshot()}

    def _run_epoch(self):
        import jax
        import numpy as np

        from gru_jax.training import batch_arrays

        pending = []
        for batch in self.batcher.batches(np.random.default_rng([0, self.epoch])):
            self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.table,
                                                                batch_arrays(batch))
            pending.append(loss)
            if len(pending) >= self.spec["log_every"]:
                np.asarray(jax.device_get(pending))
                pending = []
        np.asarray(jax.device_get(pending))
        jax.block_until_ready(self.params)
        self.epoch += 1

    def train(self):
        return timed(self._run_epoch)

    def _evaluate(self):
        from gru_jax.training import predict_log_probs

        predict_log_probs(self.predict, self.params, self.table, self.data.test_encoded, self.spec["eval_batch_size"],
                          self.defaults.max_batch_tokens)

    def warm_up_evaluation(self):
        self.monitor.reset()
        seconds = timed(self._evaluate)
        return {"first_eval_seconds": seconds, "compile_eval": self.monitor.snapshot()}

    def evaluate(self):
        return timed(self._evaluate)

    def split(self):
        return measure_recurrence_share(self)

    def finish(self):
        import numpy as np

        from gru_jax.batching import BucketedBatcher

        test = self.data.test_encoded
        eval_batcher = BucketedBatcher(test.token_ids, np.zeros(len(test.token_ids), np.int32),
                                       self.spec["eval_batch_size"], self.defaults.max_batch_tokens)
        chunk = self.model.chunk_length
        # The batches of the first training epoch; the loops run each to the chunk of its longest review.
        computed = sum(batch.token_ids.shape[0] * -(-int(batch.lengths.max()) // chunk) * chunk
                       for batch in self.batcher.batches(np.random.default_rng([0, 0])))
        return dict(jax_device_memory(), train_shapes=[list(shape) for shape in self.batcher.shapes],
                    eval_shapes=[list(shape) for shape in eval_batcher.shapes], train_computed_tokens=int(computed))


def measure_recurrence_share(session, repeats=5):
    """Time a training step and, on the same batch, the recurrent layers' loops alone, forward and backward.

    The batch has the most common training shape. The loops alone run `gru_jax.rnn.run_layer` on
    inputs already projected by each layer's input weights, so the rest of the step is the embedding
    lookup, the input projections, the head, the loss and the optimizer update. The two are timed in
    turns, and the medians are returned.
    """
    import collections

    import jax
    import jax.numpy as jnp
    import numpy as np

    from gru_jax.cells import CELLS
    from gru_jax.rnn import run_layer, sequence_mask
    from gru_jax.training import batch_arrays

    model = session.model
    batches = list(session.batcher.batches(np.random.default_rng(0)))
    common_shape = collections.Counter(batch.token_ids.shape for batch in batches).most_common(1)[0][0]
    batch = next(batch for batch in batches if batch.token_ids.shape == common_shape)
    arrays = batch_arrays(batch)
    cell_class = CELLS[model.cell]
    # Copies, because the training step below donates (deletes) the buffers of the params.
    layer_params = [jax.tree.map(jnp.copy, session.params["params"]["rnn"][f"layer_{index}"]["cell"])
                    for index in range(model.num_layers)]
    mask = sequence_mask(jnp.asarray(batch.lengths), common_shape[1]).T
    rng = np.random.default_rng(1)
    projected = [jnp.asarray(rng.normal(size=(common_shape[1], common_shape[0], layer["input_kernel"].shape[1])),
                             jnp.float32) for layer in layer_params]
    carry = jnp.zeros((common_shape[0], model.hidden_size), jnp.float32)

    @jax.jit
    def recurrence(layer_params, projected):
        def loss(layer_params, projected):
            total = 0.0
            for layer, inputs in zip(layer_params, projected):
                final_carry, outputs = run_layer(cell_class, layer, inputs, mask, carry, model.chunk_length,
                                                 model.unroll, True)
                total = total + final_carry.sum() + outputs.sum()
            return total

        return jax.grad(loss, argnums=(0, 1))(layer_params, projected)

    def step():
        session.params, session.opt_state, loss = session.train_step(session.params, session.opt_state,
                                                                      session.table, arrays)
        return loss

    jax.block_until_ready(step())
    jax.block_until_ready(recurrence(layer_params, projected))
    step_seconds, recurrence_seconds = [], []
    for _ in range(repeats):
        step_seconds.append(timed(lambda: jax.block_until_ready(step())))
        recurrence_seconds.append(timed(lambda: jax.block_until_ready(recurrence(layer_params, projected))))
    step_median = statistics.median(step_seconds)
    recurrence_median = statistics.median(recurrence_seconds)
    return {"shape": list(common_shape), "longest_sequence": int(batch.lengths.max()), "step_seconds": step_median,
            "recurrence_seconds": recurrence_median, "recurrence_share": recurrence_median / step_median}


def torch_device(spec):
    """Return the torch device of this measurement, with the CPU thread limit applied."""
    import torch

    if spec["device"] == "gpu":
        return torch.device("cuda")
    torch.set_num_threads(spec["threads"])
    return torch.device("cpu")


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def make_torch_model(cell, input_size):
    import torch

    from torch_reference import TorchGRUClassifier, TorchPmGRUClassifier

    torch.manual_seed(0)
    if cell == "gru":
        return TorchGRUClassifier(input_size, HIDDEN_SIZE, NUM_LAYERS[cell])
    return TorchPmGRUClassifier(input_size, HIDDEN_SIZE)


def torch_log_probs(model, inputs, lengths):
    """Log-probabilities of a padded batch: inputs <float32>[time, batch, input_size], lengths <int64>[batch]."""
    import torch
    import torch.nn.functional as F

    if hasattr(model, "gru"):
        # nn.GRU over the whole padded batch, read at each sequence's last real step.
        outputs, _ = model.gru(inputs)
        last = outputs[lengths - 1, torch.arange(inputs.shape[1], device=inputs.device)]
        return F.log_softmax(model.fc(F.relu(last)), dim=-1)
    return model(inputs, lengths)


def sorted_batches(lengths, batch_size):
    """Cut the indices, sorted by length, into consecutive batches."""
    import numpy as np

    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def torch_batch(table, token_ids, members):
    """Return inputs <float32>[time, batch, input_size] padded with zero vectors and lengths <int64>[batch]."""
    import numpy as np
    import torch

    lengths = np.array([len(token_ids[index]) for index in members])
    padded = np.zeros((len(members), lengths.max()), np.int64)
    for row, index in enumerate(members):
        padded[row, : lengths[row]] = token_ids[index]
    inputs = table[torch.from_numpy(padded.T).to(table.device)]
    return inputs, torch.from_numpy(lengths).to(table.device)


def time_torch_evaluation(model, table, token_ids, batch_size, device):
    """Return the seconds of one pass over `token_ids` in length-sorted batches."""
    import numpy as np
    import torch

    batches = sorted_batches(np.array([len(ids) for ids in token_ids]), batch_size)
    with torch.no_grad():
        started = time.perf_counter()
        for members in batches:
            torch_log_probs(model, *torch_batch(table, token_ids, members))
        synchronize(device)
    return time.perf_counter() - started


class TorchBatchedSession:
    """PyTorch on padded, length-sorted batches, in a shuffled batch order each epoch."""

    def __init__(self, spec):
        import numpy as np
        import torch

        self.spec = spec
        self.device = torch_device(spec)
        self.data, self.train_ids, train_labels = prepare(spec)
        self.table = torch.from_numpy(self.data.table).to(self.device)
        self.model = make_torch_model(spec["cell"], self.data.input_size).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.lengths = np.array([len(ids) for ids in self.train_ids])
        self.batches = sorted_batches(self.lengths, spec["batch_size"])
        self.labels = torch.from_numpy(train_labels.astype(np.int64)).to(self.device)
        self.rng = np.random.default_rng(0)

    def _train_batch(self, members):
        import torch
        import torch.nn.functional as F

        inputs, lengths = torch_batch(self.table, self.train_ids, members)
        self.optimizer.zero_grad()
        labels = self.labels[torch.from_numpy(members).to(self.device)]
        F.nll_loss(torch_log_probs(self.model, inputs, lengths), labels).backward()
        self.optimizer.step()

    def warm_up_training(self):
        seconds = timed(lambda: [self._train_batch(self.batches[index])
                                 for index in self.rng.permutation(len(self.batches))[:5]])
        return {"warm_up_seconds": seconds}

    def train(self):
        def epoch():
            for index in self.rng.permutation(len(self.batches)):
                self._train_batch(self.batches[index])
            synchronize(self.device)

        return timed(epoch)

    def warm_up_evaluation(self):
        return {}

    def evaluate(self):
        return time_torch_evaluation(self.model, self.table, self.data.test_encoded.token_ids,
                                     self.spec["eval_batch_size"], self.device)

    def finish(self):
        import torch

        computed = sum(len(members) * self.lengths[members].max() for members in self.batches)
        result = {"train_computed_tokens": int(computed)}
        if self.device.type == "cuda":
            result["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return result


class DLStudioSession:
    """DLStudio's loop: per review, one network call per word with the carry passed along, then one step."""

    def __init__(self, spec):
        import numpy as np
        import torch

        self.spec = spec
        self.device = torch_device(spec)
        self.data, train_ids, train_labels = prepare(spec)
        self.table = torch.from_numpy(self.data.table).to(self.device)
        self.model = make_torch_model(spec["cell"], self.data.input_size).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        count = min(spec["dlstudio_reviews"], len(train_ids))
        self.reviews = train_ids[:count]
        self.labels = torch.from_numpy(train_labels[:count].astype(np.int64)).to(self.device)
        self.test_reviews = self.data.test_encoded.token_ids[:count]

    def _call(self, word, carry):
        import torch.nn.functional as F

        from torch_reference import pmgru_step

        # The whole network on one word, as DLStudio's forward(x, h): the head runs on every call.
        if self.spec["cell"] == "gru":
            output, carry = self.model.gru(word[None, None], carry)
            top = output[0]
        else:
            carry = pmgru_step(self.model.project1, self.model.project2, word[None], carry)
            top = carry
        return F.log_softmax(self.model.fc(F.relu(top)), dim=-1), carry

    def _classify(self, review):
        import numpy as np
        import torch

        if self.spec["cell"] == "gru":
            carry = torch.zeros(NUM_LAYERS["gru"], 1, HIDDEN_SIZE, device=self.device)
        else:
            carry = torch.zeros(1, HIDDEN_SIZE, device=self.device)
        for word in self.table[torch.from_numpy(review.astype(np.int64)).to(self.device)]:
            log_probs, carry = self._call(word, carry)
        return log_probs

    def _train_review(self, review, label):
        import torch.nn.functional as F

        self.optimizer.zero_grad()
        F.nll_loss(self._classify(review), label[None]).backward()
        self.optimizer.step()

    def warm_up_training(self):
        return {"warm_up_seconds": timed(lambda: [self._train_review(review, label) for review, label
                                                   in zip(self.reviews[:3], self.labels[:3])])}

    def train(self):
        def one_pass():
            for review, label in zip(self.reviews, self.labels):
                self._train_review(review, label)
            synchronize(self.device)

        return timed(one_pass)

    def warm_up_evaluation(self):
        return {}

    def evaluate(self):
        import torch

        def one_pass():
            with torch.no_grad():
                for review in self.test_reviews:
                    self._classify(review)
            synchronize(self.device)

        return timed(one_pass)

    def finish(self):
        return {"train_reviews": len(self.reviews), "eval_reviews": len(self.test_reviews)}


class EvalSweepSession:
    """Evaluation at several batch sizes, with untrained weights, because weights do not change the work."""

    def __init__(self, spec):
        self.spec = spec
        self.data, _, _ = prepare(spec)
        if spec["framework"] == "gru_jax":
            import jax

            from gru_jax.training import build_model, init_params, make_predict

            check_jax_backend(spec)
            model = build_model(spec["cell"], HIDDEN_SIZE, NUM_LAYERS[spec["cell"]], spec["unroll"])
            self.params = init_params(model, self.data.input_size, 0)
            self.table = jax.device_put(self.data.table)
            self.predict = make_predict(model)
        else:
            import torch

            self.device = torch_device(spec)
            self.table = torch.from_numpy(self.data.table).to(self.device)
            self.model = make_torch_model(spec["cell"], self.data.input_size).to(self.device)

    def evaluate_at(self, batch_size):
        if self.spec["framework"] != "gru_jax":
            return time_torch_evaluation(self.model, self.table, self.data.test_encoded.token_ids, batch_size,
                                         self.device)
        from gru_jax.training import predict_log_probs

        # Enough tokens per batch that the common lengths (up to 128 words) get batch_size rows.
        max_batch_tokens = max(65536, batch_size * 128)
        return timed(lambda: predict_log_probs(self.predict, self.params, self.table, self.data.test_encoded,
                                               batch_size, max_batch_tokens))

    def finish(self):
        if self.spec["framework"] == "gru_jax":
            return jax_device_memory()
        import torch

        return {"peak_device_mib": torch.cuda.max_memory_allocated() / 2**20} if self.device.type == "cuda" else {}


SESSIONS = {"gru_jax": GruJaxSession, "torch_batched": TorchBatchedSession, "dlstudio": DLStudioSession,
            "eval_sweep": EvalSweepSession}


def reply(value):
    print(REPLY_PREFIX + json.dumps(value), flush=True)


def run_worker(spec):
    """Set up one session, then run the commands read from stdin, one reply line per command."""
    if spec["device"] == "cpu":
        limit_threads(spec["threads"])
        # JAX would use a GPU if one were installed; the CPU measurement must not.
        os.environ["JAX_PLATFORMS"] = "cpu"
    else:
        # Several workers share the GPU, and JAX would otherwise take 75% of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    if spec["kind"] == "prepare":
        prepare(spec)
        reply({})
        return
    session = SESSIONS[spec["kind"]](spec)
    reply({"ready": True})
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "finish":
            reply(dict(session.finish(), peak_rss_mib=peak_rss_mib()))
            return
        if command == "evaluate_at":
            reply(session.evaluate_at(int(argument)))
        else:
            reply(getattr(session, command)())


# ----------------------------------------------------------------------------------------------
# Orchestrator side.


class Worker:
    """A worker process that runs one session and its commands, one command at a time."""

    def __init__(self, spec, log_path):
        self.label = " ".join(str(spec[key]) for key in ("kind", "framework", "size", "cell") if key in spec)
        print(f"  starting {self.label}", file=sys.stderr, flush=True)
        self.log = open(log_path, "a")
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._read_reply()

    def _read_reply(self):
        for line in self.process.stdout:
            if line.startswith(REPLY_PREFIX):
                return json.loads(line[len(REPLY_PREFIX):])
        self.process.wait()
        self.log.flush()
        raise SystemExit(f"benchmark worker failed: {self.label} (exit code {self.process.returncode}); "
                         "the end of the workers' log is above")

    def send(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read_reply()

    def finish(self):
        result = self.send("finish")
        self.process.wait()
        self.log.close()
        return result


def run_alone(spec, log_path):
    worker = Worker(spec, log_path)
    worker.process.wait()
    return worker.ready


def take_turns(workers, command, passes):
    """Send `command` to each worker in turn, `passes` times, and return each framework's replies in order."""
    replies = {framework: [] for framework in workers}
    for _ in range(passes):
        for framework, worker in workers.items():
            replies[framework].append(worker.send(command))
    return replies


def measure_size_and_cell(base, size, cell, frameworks, workdir, log_path):
    """Measure every framework on one archive and cell, in turns; return their runs."""
    specs = {}
    for framework in frameworks:
        spec = dict(base, kind=framework, size=size, cell=cell)
        if framework == "gru_jax":
            spec["compilation_cache"] = str(Path(workdir) / f"compiled-{size}-{cell}")
        specs[framework] = spec
    workers = {framework: Worker(spec, log_path) for framework, spec in specs.items()}
    runs = {framework: {"framework": framework, "size": int(size), "cell": cell} for framework in frameworks}

    for framework, worker in workers.items():
        runs[framework].update(worker.send("warm_up_training"))
    train_seconds = take_turns(workers, "train", base["epochs"])
    for framework, worker in workers.items():
        runs[framework].update(worker.send("warm_up_evaluation"))
    eval_seconds = take_turns(workers, "evaluate", base["epochs"])
    if "gru_jax" in workers:
        runs["gru_jax"]["split"] = workers["gru_jax"].send("split")
    for framework, worker in workers.items():
        runs[framework].update(worker.finish())
        runs[framework]["train_seconds"] = train_seconds[framework]
        runs[framework]["eval_seconds"] = eval_seconds[framework]

    if "gru_jax" in specs:
        # The same warm-up again in a new process, with the compilation cache now filled.
        worker = Worker(specs["gru_jax"], log_path)
        again = worker.send("warm_up_training")
        again.update(worker.send("warm_up_evaluation"))
        again["peak_rss_mib"] = worker.finish()["peak_rss_mib"]
        runs["gru_jax"]["second_run"] = again
    return list(runs.values())


def measure_eval_sweep(base, size, cell, batch_sizes, workdir, log_path):
    workers = {framework: Worker(dict(base, kind="eval_sweep", framework=framework, size=size, cell=cell), log_path)
               for framework in ("gru_jax", "torch_batched")}
    sweeps = {framework: [] for framework in workers}
    for batch_size in batch_sizes:
        for framework, worker in workers.items():
            seconds = [worker.send(f"evaluate_at {batch_size}") for _ in range(base["epochs"] + 1)]
            sweeps[framework].append({"batch_size": batch_size, "first_seconds": seconds[0], "seconds": seconds[1:]})
    results = []
    for framework, worker in workers.items():
        results.append(dict(worker.finish(), framework=framework, size=int(size), cell=cell, sweep=sweeps[framework]))
    return results


def add_throughput(runs, sweeps):
    """Add the medians and the reviews/s and tokens/s they give to every run and sweep entry."""
    for run in runs:
        reviews, tokens, eval_reviews, eval_tokens = run.pop("counts")
        for phase, count, token_count in (("train", reviews, tokens), ("eval", eval_reviews, eval_tokens)):
            seconds = run[f"{phase}_seconds"]
            if seconds:
                median = statistics.median(seconds)
                run[phase] = {"median_seconds": median, "reviews": count, "tokens": token_count,
                              "reviews_per_second": count / median, "tokens_per_second": token_count / median}
    for sweep in sweeps:
        reviews, tokens = sweep.pop("counts")
        for entry in sweep["sweep"]:
            median = statistics.median(entry["seconds"])
            entry.update(median_seconds=median, reviews_per_second=reviews / median, tokens_per_second=tokens / median)


def data_counts(base, size, dlstudio_reviews):
    """Reviews and real tokens that one pass of each framework processes: full archives, or DLStudio's subset."""
    data, train_ids, _ = prepare(dict(base, size=size))
    test_ids = data.test_encoded.token_ids
    full = (len(train_ids), count_tokens(train_ids), len(test_ids), count_tokens(test_ids))
    count = min(dlstudio_reviews, len(train_ids))
    subset = (count, count_tokens(train_ids[:count]), min(count, len(test_ids)), count_tokens(test_ids[:count]))
    return full, subset


def compute_ratios(runs):
    by_key = {(run["size"], run["cell"], run["framework"]): run for run in runs}
    ratios = []
    for (size, cell, framework), run in by_key.items():
        if framework != "gru_jax" or "train" not in run:
            continue
        entry = {"size": size, "cell": cell}
        for other, name in (("torch_batched", "pytorch"), ("dlstudio", "dlstudio")):
            baseline = by_key.get((size, cell, other))
            if baseline is None or "train" not in baseline:
                continue
            for phase in ("train", "eval"):
                entry[f"{phase}_vs_{name}"] = run[phase]["tokens_per_second"] / baseline[phase]["tokens_per_second"]
        ratios.append(entry)
    return ratios


def machine_description(device):
    import jax
    import torch

    model_name = platform.processor()
    memory_gib = None
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name"))
        memory_gib = next(int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    description = {"cpu": model_name, "cores": os.cpu_count(), "memory_gib": memory_gib,
                   "load_average_before": list(os.getloadavg()), "python": platform.python_version(),
                   "jax": jax.__version__, "torch": torch.__version__, "platform": platform.platform()}
    if device == "gpu":
        description["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return description


def measure(args, workdir):
    from gru_jax.config import TrainConfig

    frameworks = args.frameworks.split(",")
    sort_pool = args.sort_pool if args.sort_pool is not None else TrainConfig().sort_pool
    base = {"data": args.data, "word2vec_epochs": args.word2vec_epochs, "cache_dir": args.cache_dir,
            "epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
            "threads": args.threads, "log_every": args.log_every, "unroll": args.unroll,
            "sort_pool": sort_pool,
            "dlstudio_reviews": args.dlstudio_reviews, "device": args.device}
    settings = dict(base, sizes=args.sizes, cells=args.cells, frameworks=frameworks, hidden_size=HIDDEN_SIZE,
                    num_layers=NUM_LAYERS, learning_rate=LEARNING_RATE, momentum=MOMENTUM,
                    xla_flags=ONE_THREAD_XLA_FLAGS if args.device == "cpu" and args.threads == 1 else "")
    results = {"settings": settings, "machine": machine_description(args.device), "runs": [], "eval_sweeps": []}
    log_path = Path(workdir) / "workers.log"
    for size in args.sizes.split(","):
        # Fill the word2vec cache first, so that no measured process pays for gensim's training.
        run_alone(dict(base, kind="prepare", size=size), log_path)
        full, subset = data_counts(base, size, args.dlstudio_reviews)
        for cell in args.cells.split(","):
            runs = measure_size_and_cell(base, size, cell, frameworks, workdir, log_path)
            for run in runs:
                run["counts"] = subset if run["framework"] == "dlstudio" else full
            results["runs"].extend(runs)
            if args.eval_batch_sizes:
                batch_sizes = [int(value) for value in args.eval_batch_sizes.split(",")]
                sweeps = measure_eval_sweep(base, size, cell, batch_sizes, workdir, log_path)
                for sweep in sweeps:
                    sweep["counts"] = (full[2], full[3])
                results["eval_sweeps"].extend(sweeps)
    add_throughput(results["runs"], results["eval_sweeps"])
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["ratios"] = compute_ratios(results["runs"])
    return results


def format_table(results):
    lines = []
    header = (f"{'archive':>7} {'cell':>5} {'framework':<13} {'train rev/s':>11} {'train tok/s':>11} "
              f"{'eval rev/s':>10} {'eval tok/s':>10} {'compile s':>9} {'rerun':>7} {'shapes':>6} {'peak MiB':>8}")
    lines += [header, "-" * len(header)]
    for run in results["runs"]:
        train, evaluation = run["train"], run["eval"]
        compile_seconds = rerun = shapes = ""
        if run["framework"] == "gru_jax":
            compile_seconds = f"{run['compile_first_epoch']['seconds'] + run['compile_eval']['seconds']:.1f}"
            second = run["second_run"]
            rerun = f"{second['compile_first_epoch']['cache_misses'] + second['compile_eval']['cache_misses']} new"
            shapes = f"{len(run['train_shapes'])}+{len(run['eval_shapes'])}"
        lines.append(f"{run['size']:>7} {run['cell']:>5} {run['framework']:<13} {train['reviews_per_second']:>11.1f} "
                     f"{train['tokens_per_second']:>11.0f} {evaluation['reviews_per_second']:>10.1f} "
                     f"{evaluation['tokens_per_second']:>10.0f} {compile_seconds:>9} {rerun:>7} {shapes:>6} "
                     f"{run['peak_rss_mib']:>8.0f}")

    def ratio_text(value):
        return "" if value is None else f"{value:.1f}x"

    lines += ["", "Ratios of real tokens/s, gru_jax over the baseline (same archive and cell):"]
    header = f"{'archive':>7} {'cell':>5} {'train/PyTorch':>13} {'eval/PyTorch':>12} {'train/DLStudio':>14} {'eval/DLStudio':>13}"
    lines += [header, "-" * len(header)]
    for entry in results["ratios"]:
        lines.append(f"{entry['size']:>7} {entry['cell']:>5} {ratio_text(entry.get('train_vs_pytorch')):>13} "
                     f"{ratio_text(entry.get('eval_vs_pytorch')):>12} {ratio_text(entry.get('train_vs_dlstudio')):>14} "
                     f"{ratio_text(entry.get('eval_vs_dlstudio')):>13}")

    jax_runs = [run for run in results["runs"] if run["framework"] == "gru_jax"]
    if jax_runs:
        lines += ["", "gru_jax compilation (s, tracing + lowering + XLA) and its most common training batch:"]
        for run in jax_runs:
            split, second = run["split"], run["second_run"]
            lines.append(
                f"  {run['size']:>4} {run['cell']:>5}: init {run['compile_setup']['seconds']:.1f}, first epoch "
                f"{run['compile_first_epoch']['seconds']:.1f} ({run['compile_first_epoch']['backend_compiles']} programs), "
                f"first evaluation {run['compile_eval']['seconds']:.1f}; rerun: "
                f"{second['compile_first_epoch']['seconds'] + second['compile_eval']['seconds']:.1f} with "
                f"{second['compile_first_epoch']['cache_hits'] + second['compile_eval']['cache_hits']} cache hits. "
                f"Step on {split['shape'][0]}x{split['shape'][1]} (longest {split['longest_sequence']}): "
                f"{split['step_seconds'] * 1e3:.0f} ms, recurrent loops {split['recurrence_seconds'] * 1e3:.0f} ms "
                f"({split['recurrence_share']:.0%})")

    device_peaks = [run for run in results["runs"] + results["eval_sweeps"] if "peak_device_mib" in run]
    if device_peaks:
        lines += ["", "Peak device memory (MiB): " + ", ".join(
            f"{run['size']} {run['cell']} {run['framework']} {run['peak_device_mib']:.0f}" for run in device_peaks)]
    if results["eval_sweeps"]:
        lines += ["", "Evaluation throughput (real tokens/s) by batch size:"]
        for sweep in results["eval_sweeps"]:
            cells = "  ".join(f"{entry['batch_size']}: {entry['tokens_per_second']:.0f}" for entry in sweep["sweep"])
            lines.append(f"  {sweep['size']:>4} {sweep['cell']:>5} {sweep['framework']:<13} {cells}")

    machine, settings = results["machine"], results["settings"]
    where = machine.get("gpu") or f"{settings['threads']} thread(s) per framework"
    lines += ["", f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']:.0f} GiB; {where}; batch size "
                  f"{settings['batch_size']} (evaluation {settings['eval_batch_size']}); load average "
                  f"{machine['load_average_before'][0]:.1f} before, {machine['load_average_after'][0]:.1f} after"]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    if not args.data:
        print("error: --data is required: the directory of DLStudio's sentiment archives.", file=sys.stderr)
        return 2
    for size in args.sizes.split(","):
        for split in ("train", "test"):
            path = Path(args.data) / f"sentiment_dataset_{split}_{size}.tar.gz"
            if not path.is_file():
                print(f"error: {path} not found. Pass --data with the directory of the DLStudio archives.",
                      file=sys.stderr)
                return 2
    unknown = set(args.frameworks.split(",")) - set(FRAMEWORKS)
    if unknown:
        print(f"error: unknown framework {sorted(unknown)[0]!r}. Use some of {','.join(FRAMEWORKS)}.", file=sys.stderr)
        return 2

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gru_jax_benchmark_") as workdir:
        try:
            results = measure(args, workdir)
        except SystemExit:
            log = Path(workdir) / "workers.log"
            if log.is_file():
                sys.stderr.write(log.read_text()[-4000:])
            raise
    results["total_seconds"] = time.perf_counter() - started
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
