"""The training step, evaluation, and the epoch loop with checkpoints, resume and a NaN guard."""

import contextlib
import dataclasses
import logging
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_jax.batching import BucketedBatcher
from gru_jax.checkpoints import CheckpointStore
from gru_jax.classifier import SentimentClassifier, project_table
from gru_jax.errors import CheckpointError, DivergedError, EmbeddingsError
from gru_jax.metrics import classification_metrics
from gru_jax.parallel import DataParallel
from gru_jax.scoring import score_batches, scoring_table

logger = logging.getLogger(__name__)


def build_model(cell, hidden_size, num_layers, unroll=1, num_classes=2, loop="chunked"):
    return SentimentClassifier(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                               num_classes=num_classes, unroll=unroll, loop=loop)


def init_params(model, input_size, seed):
    """Initialize parameters from `seed` (PyTorch's initialization, see `gru_jax.cells`)."""
    inputs = jnp.zeros((1, 1, input_size), jnp.float32)
    # One compiled program instead of one per initializer call.
    return jax.jit(model.init)(jax.random.key(seed), inputs, jnp.ones((1,), jnp.int32))


def make_optimizer(learning_rate, momentum, clip_norm=None, lr_schedule="constant", total_steps=None):
    """SGD with momentum (PyTorch's `torch.optim.SGD` update), optionally after global-norm clipping.

    With lr_schedule 'cosine', the learning rate decays from `learning_rate` to 0 over `total_steps`.
    """
    if lr_schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(learning_rate, decay_steps=max(int(total_steps), 1))
    sgd = optax.sgd(learning_rate, momentum=momentum if momentum > 0 else None)
    if clip_norm is None:
        return sgd
    return optax.chain(optax.clip_by_global_norm(clip_norm), sgd)


def nll_loss(log_probs, labels, weights):
    """Weighted mean negative log-likelihood.

    Args:
      log_probs: <float32>[batch, num_classes].
      labels: <int32>[batch].
      weights: <float32>[batch], 0 for rows that only fill up the batch.
    """
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return -(weights * picked).sum() / jnp.maximum(weights.sum(), 1.0)


def make_train_step(model, optimizer):
    """Return the jitted `train_step(params, opt_state, table, batch_arrays) -> (params, opt_state, loss)`.

    `batch_arrays` is (token_ids, lengths, labels, weights) of a `Batch`. The params and optimizer
    state buffers are donated, so the update happens in place on the device.
    """

    def loss_fn(params, table, token_ids, lengths, labels, weights):
        log_probs = model.apply(params, table, lengths, token_ids=token_ids)
        return nll_loss(log_probs, labels, weights)

    def train_step(params, opt_state, table, batch_arrays):
        loss, grads = jax.value_and_grad(loss_fn)(params, table, *batch_arrays)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1))


class Predictor:
    """The jitted scoring functions of one model.

    Calling it, `predict(params, table, token_ids, lengths)`, returns <float32>[batch, num_classes]
    log-probabilities. `project_table` and `predict_projected` split the same computation in two, so
    that the first layer's input weights are applied once per table row instead of once per word.
    """

    def __init__(self, model):
        self.model = model

        def predict(params, table, token_ids, lengths):
            return model.apply(params, table, lengths, token_ids=token_ids)

        def predict_projected(params, projected_table, token_ids, lengths):
            return model.apply(params, projected_table, lengths, inputs_are_projected=True, token_ids=token_ids)

        self._predict = jax.jit(predict)
        self.project_table = jax.jit(lambda params, table: project_table(params, model.cell, table))
        self.predict_projected = jax.jit(predict_projected)

    def __call__(self, params, table, token_ids, lengths):
        return self._predict(params, table, token_ids, lengths)


def make_predict(model):
    """Return a `Predictor`: `predict(params, table, token_ids, lengths) -> <float32>[batch, num_classes]` log-probabilities."""
    return Predictor(model)


def batch_arrays(batch):
    return (batch.token_ids, batch.lengths, batch.labels, batch.weights)


def predict_log_probs(predict, params, table, encoded, batch_size, max_batch_tokens=None, min_bucket=32,
                      growth=2.0, parallel=None):
    """Score every encoded review in length-sorted batches.

    When the table has fewer rows than the reviews have words, it is projected once by the first
    layer's input weights (see `Predictor`), which gives the same scores up to float32 rounding.

    Args:
      params, table: placed by `parallel.replicate`.
      parallel: a `DataParallel`; None uses one device.

    Returns:
      <float32>[num_reviews, num_classes], in the order of `encoded.token_ids`.
    """
    parallel = parallel or DataParallel(jax.devices()[:1])
    labels = np.zeros(len(encoded.token_ids), dtype=np.int32)
    batcher = BucketedBatcher(encoded.token_ids, labels, batch_size, max_batch_tokens, min_bucket, growth,
                              row_multiple=parallel.num_devices)
    predict, table = scoring_table(predict, params, table, int(batcher.lengths.sum()))
    result = None
    for indices, log_probs in score_batches(predict, params, table, batcher.batches(), parallel):
        if result is None:
            result = np.zeros((len(encoded.token_ids), log_probs.shape[1]), dtype=np.float32)
        result[indices] = log_probs
    return result


def evaluate_encoded(predict, params, table, encoded, archive, batch_size, max_batch_tokens=None, parallel=None):
    """Score an archive's encoded reviews and compute metrics; empty reviews are skipped and counted.

    Returns:
      (metrics dict, log-probabilities <float32>[num_scored, num_classes]).
    """
    log_probs = predict_log_probs(predict, params, table, encoded, batch_size, max_batch_tokens, parallel=parallel)
    kept = encoded.review_indices
    predictions = log_probs.argmax(axis=1)
    metrics = classification_metrics(
        archive.labels[kept], predictions, archive.categories[kept], archive.category_names
    )
    metrics["skipped_empty_reviews"] = encoded.empty_reviews
    metrics["dropped_tokens"] = encoded.dropped_tokens
    metrics["total_tokens"] = encoded.total_tokens
    return metrics, log_probs


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, signal_name, checkpoint):
        super().__init__(f"training stopped by {signal_name}; checkpoint saved to {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


@contextlib.contextmanager
def deferred_signals():
    """Turn SIGINT and SIGTERM into a flag that the loop checks between steps.

    Yields a dict whose 'signal' entry becomes the signal's name. A second signal of the same kind
    restores the default behaviour, so a stuck process can still be stopped.
    """
    state = {"signal": None}
    previous = {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if state["signal"] is not None:
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(name)
        state["signal"] = name

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:
        # Not the main thread: signals cannot be caught here, so leave them alone.
        previous.clear()
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclasses.dataclass
class Progress:
    """Training progress, stored in every checkpoint's metadata."""

    epoch: int = 0  # The epoch in progress (0-based).
    batch_in_epoch: int = 0  # Batches of that epoch already applied.
    step: int = 0  # Optimizer steps so far.
    finished: bool = False
    train_seconds: float = 0.0
    loss_history: list = dataclasses.field(default_factory=list)  # [step, mean loss since the previous entry]
    epoch_losses: list = dataclasses.field(default_factory=list)  # mean training loss of each finished epoch
    # Losses of the epoch in progress, kept here so that a resumed epoch's mean covers all of its steps.
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0


def _add_epoch_losses(progress, losses):
    # One addition per step in step order, so that the sum does not depend on where checks or a resume
    # split the epoch.
    for loss in losses.tolist():
        progress.epoch_loss_sum += loss
        progress.epoch_loss_count += 1


@dataclasses.dataclass
class FitResult:
    params: object
    progress: Progress
    checkpoint_dir: object


class Trainer:
    """Runs the epoch loop for one model and saves checkpoints in `checkpoint_dir`.

    Args:
      config: a `TrainConfig`.
      data: `PreparedData` (vocabulary, table, encoded reviews).
      checkpoint_dir: the orbax checkpoint directory of this run.
      model_metadata: JSON-ready facts stored in every checkpoint (model settings, vocabulary, config).
      progress_bar: show a tqdm bar per epoch on stderr.
      parallel: a `DataParallel`; None uses all devices, data-parallel when there are several.
    """

    def __init__(self, config, data, checkpoint_dir, model_metadata, progress_bar=False, parallel=None):
        self.config = config
        self.data = data
        self.model_metadata = model_metadata
        self.progress_bar = progress_bar
        self.parallel = parallel or DataParallel()
        self.model = build_model(config.cell, config.hidden_size, config.resolved_num_layers(), config.unroll,
                                 loop=config.recurrent_loop)
        self.table = self.parallel.replicate(data.table)
        encoded = data.train_encoded
        labels = data.train.labels[encoded.review_indices]
        batch_size = min(config.batch_size, len(encoded.token_ids))
        if batch_size < config.batch_size:
            logger.warning(
                "batch-size %d is larger than the %d training reviews; using %d",
                config.batch_size, len(encoded.token_ids), batch_size,
            )
        self.batcher = BucketedBatcher(encoded.token_ids, labels, batch_size, config.max_batch_tokens,
                                       config.min_bucket, config.bucket_growth,
                                       row_multiple=self.parallel.num_devices, sort_pool=config.sort_pool)
        self.optimizer = make_optimizer(config.resolved_learning_rate(), config.momentum, config.clip_norm,
                                        config.lr_schedule, total_steps=config.epochs * len(self.batcher))
        self.train_step = make_train_step(self.model, self.optimizer)
        self.store = CheckpointStore(checkpoint_dir)

    def initial_state(self):
        params = init_params(self.model, self.data.input_size, self.config.seed)
        return params, jax.jit(self.optimizer.init)(params), Progress()

    def restore_state(self):
        """Restore params, optimizer state and progress from the latest checkpoint."""
        self._check_checkpoint_fits()
        params, opt_state, _ = self.initial_state()
        target = {"params": params, "opt_state": opt_state}
        restored = self.store.restore(state_target=target)
        progress = Progress(**restored["metadata"]["progress"])
        if not np.array_equal(restored["table"], self.data.table):
            raise CheckpointError(
                f"{self.store.directory}: the checkpoint's embedding table differs from the one built now "
                "(other data or vectors). Resume with the same --train-data, --test-data and --embeddings, "
                "or use --overwrite to start again."
            )
        state = restored["state"]
        return state["params"], state["opt_state"], progress

    def _check_checkpoint_fits(self):
        """Raise EmbeddingsError when the latest checkpoint was trained on vectors of another dimension."""
        saved = self.store.read_metadata()
        saved_size = saved.get("model", {}).get("input_size")
        if saved_size != self.data.input_size:
            raise EmbeddingsError(
                f"{self.data.embeddings_source}: the vectors have dimension {self.data.input_size}, but the "
                f"checkpoint in {self.store.directory} was trained with dimension {saved_size} (vectors from "
                f"{saved.get('embeddings_source')}). Resume with vectors of dimension {saved_size}, or pass "
                "--overwrite to start again."
            )

    def _check_params_finite(self, params, progress):
        finite = jax.tree.reduce(lambda ok, leaf: ok & jnp.isfinite(leaf).all(), params, jnp.asarray(True))
        if not bool(finite):
            latest = self.store.latest_step()
            last_good = (f"the last good checkpoint is {self.store.directory / str(latest)}"
                         if latest is not None else "no checkpoint was saved yet")
            raise DivergedError(
                f"parameters became NaN or infinite by step {progress.step} (epoch {progress.epoch + 1}); {last_good}. "
                f"Lower --learning-rate (now {self.config.resolved_learning_rate()}) or set --clip-norm."
            )

    def save(self, params, opt_state, progress):
        # A finite loss does not prove the update after it was finite, so check before writing.
        self._check_params_finite(params, progress)
        metadata = dict(self.model_metadata, progress=dataclasses.asdict(progress))
        self.store.save(progress.step, {"params": params, "opt_state": opt_state}, self.data.table, metadata)
        return self.store.directory / str(progress.step)

    def _check_losses(self, pending, progress, last_logged_step):
        """Fetch the losses of the steps since the last check; raise DivergedError on a non-finite one."""
        if not pending:
            return None
        losses = np.asarray(jax.device_get(pending), dtype=np.float64)
        finite = np.isfinite(losses)
        if not finite.all():
            bad_step = last_logged_step + int(np.argmin(finite)) + 1
            latest = self.store.latest_step()
            kept = (f"the last good checkpoint is {self.store.directory / str(latest)}"
                    if latest is not None else "no checkpoint was saved yet")
            raise DivergedError(
                f"training loss became {losses[~finite][0]} at step {bad_step} (epoch {progress.epoch + 1}); "
                f"{kept}. Lower --learning-rate (now {self.config.resolved_learning_rate()}) or set --clip-norm."
            )
        return losses

    def fit(self, resume=False):
        """Train until the configured number of epochs, resuming from the latest checkpoint if asked.

        Raises:
          Interrupted: after SIGINT or SIGTERM, once the checkpoint is saved.
          DivergedError: the loss became NaN or infinite; no checkpoint is written for that state.
        """
        config = self.config
        if resume and self.store.latest_step() is not None:
            params, opt_state, progress = self.restore_state()
            logger.info("resuming at step %d (epoch %d, batch %d)", progress.step, progress.epoch + 1,
                        progress.batch_in_epoch)
        else:
            if resume:
                logger.warning("%s: no checkpoint to resume from; starting from the beginning", self.store.directory)
            params, opt_state, progress = self.initial_state()
        progress.finished = False
        params, opt_state = self.parallel.replicate((params, opt_state))

        logger.info("training %s: %d layer(s), hidden size %d, %d training reviews, %d batches per epoch, shapes %s",
                    config.cell, config.resolved_num_layers(), config.hidden_size, len(self.batcher.token_ids),
                    len(self.batcher), self.batcher.shapes)
        if self.parallel.is_parallel:
            logger.info("data-parallel on %s", self.parallel.describe())
        with deferred_signals() as interrupt:
            while progress.epoch < config.epochs:
                params, opt_state = self._run_epoch(params, opt_state, progress, interrupt)
                progress.epoch += 1
                progress.batch_in_epoch = 0
                progress.epoch_loss_sum, progress.epoch_loss_count = 0.0, 0
                progress.finished = progress.epoch >= config.epochs
                path = self.save(params, opt_state, progress)
                # A signal during the epoch's last batch or its save stops here, after the epoch's checkpoint.
                if interrupt["signal"] is not None and not progress.finished:
                    raise Interrupted(interrupt["signal"], path)
        return FitResult(params, progress, self.store.directory)

    def _run_epoch(self, params, opt_state, progress, interrupt):
        config = self.config
        rng = np.random.default_rng([config.seed, progress.epoch])
        num_batches = len(self.batcher)
        bar = None
        if self.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(self.batcher.token_ids), unit="review", leave=True,
                       desc=f"epoch {progress.epoch + 1}/{config.epochs}", dynamic_ncols=True)
        pending = []
        last_checked_step = progress.step
        started = time.perf_counter()
        try:
            for batch in self.batcher.batches(rng, start=progress.batch_in_epoch):
                arrays = self.parallel.split_batch(batch_arrays(batch))
                params, opt_state, loss = self.train_step(params, opt_state, self.table, arrays)
                pending.append(loss)
                progress.step += 1
                progress.batch_in_epoch += 1
                if bar is not None:
                    bar.update(batch.num_real)

                last_batch = progress.batch_in_epoch == num_batches
                if len(pending) >= config.log_every or last_batch:
                    losses = self._check_losses(pending, progress, last_checked_step)
                    pending, last_checked_step = [], progress.step
                    _add_epoch_losses(progress, losses)
                    progress.loss_history.append([progress.step, float(losses.mean())])
                    logger.info("epoch %d/%d, step %d: average loss %.4f", progress.epoch + 1, config.epochs,
                                progress.step, losses.mean())
                    if bar is not None:
                        bar.set_postfix(loss=f"{losses.mean():.4f}")
                if config.checkpoint_every and progress.step % config.checkpoint_every == 0 and not last_batch:
                    losses = self._check_losses(pending, progress, last_checked_step)
                    if losses is not None:
                        _add_epoch_losses(progress, losses)
                        progress.loss_history.append([progress.step, float(losses.mean())])
                    pending, last_checked_step = [], progress.step
                    progress.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save(params, opt_state, progress)
                if interrupt["signal"] is not None and not last_batch:
                    losses = self._check_losses(pending, progress, last_checked_step)
                    if losses is not None:
                        _add_epoch_losses(progress, losses)
                        progress.loss_history.append([progress.step, float(losses.mean())])
                    progress.train_seconds += time.perf_counter() - started
                    # The periodic checkpoint above may already hold this very step.
                    if self.store.latest_step() != progress.step:
                        self.save(params, opt_state, progress)
                    raise Interrupted(interrupt["signal"], self.store.directory / str(progress.step))
        finally:
            if bar is not None:
                bar.close()
        jax.block_until_ready(params)
        progress.train_seconds += time.perf_counter() - started
        count = progress.epoch_loss_count
        progress.epoch_losses.append(progress.epoch_loss_sum / count if count else float("nan"))
        return params, opt_state
