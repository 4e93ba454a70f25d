"""Saving and restoring runs with orbax, with what is needed to rebuild the model and vocabulary.

A run's `checkpoints/` directory contains one orbax step directory per save. Orbax writes each save to a
temporary directory (`<step>.orbax-checkpoint-tmp-<timestamp>`) and renames it when complete, so a
process killed mid-save leaves the earlier checkpoints intact, and the temporary directory is never
listed as a step. A store opened for writing deletes such leftovers.

Each step directory contains three items:
  state       params, optimizer state and step (orbax StandardSave)
  embeddings  the embedding table, <float32>[vocabulary size, input size]
  metadata    JSON: model settings, vocabulary words, training progress and the run's config
"""

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from gru_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

ITEMS = ("state", "embeddings", "metadata")
FORMAT_VERSION = 1
# Orbax's name part for a save in progress; a directory with it is never a complete checkpoint.
PARTIAL_SAVE_MARKER = ".orbax-checkpoint-tmp"


def _is_step_dir(path):
    return path.is_dir() and (path / "metadata").is_dir() and (path / "state").is_dir()


def resolve(path):
    """Find the checkpoint directory and step meant by `path`.

    `path` may be a run's output directory, its `checkpoints/` directory (the latest step is used), or
    one step directory inside it.

    Returns:
      (checkpoints directory, step).

    Raises:
      CheckpointError: nothing there is a complete checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found. Pass a run's output directory or its checkpoints/ directory.")
    if _is_step_dir(path) and path.name.isdigit():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    step = CheckpointStore(path, create=False).latest_step()
    if step is None:
        raise CheckpointError(
            f"{path}: contains no complete checkpoint. Pass the output directory of a run that saved one."
        )
    return path, step


class CheckpointStore:
    """A directory of orbax checkpoints of one run.

    Args:
      directory: where the step directories go.
      max_to_keep: how many of the newest checkpoints to keep.
      create: open for writing: create the directory if it is missing and delete partial saves left by a
        killed process. False only reads, so that it never deletes a save another process is writing.
    """

    def __init__(self, directory, max_to_keep=2, create=True):
        self.directory = Path(directory).absolute()
        # Orbax's own cleanup of partial saves runs in a background thread and races with a second
        # manager on the same directory, so writers delete them here, before any save starts.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False,
            cleanup_tmp_directories=False,
        )
        if create:
            self._remove_partial_saves()
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _remove_partial_saves(self):
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            if PARTIAL_SAVE_MARKER in path.name:
                logger.warning("%s: deleting a partial checkpoint left by an interrupted save", path)
                shutil.rmtree(path, ignore_errors=True)

    def latest_step(self):
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step, state, table, metadata):
        """Write one checkpoint and wait until it is complete on disk.

        Args:
          step: the optimizer step count, the checkpoint's name.
          state: a pytree of arrays (params, opt_state, step).
          table: <float32>[vocabulary size, input size].
          metadata: a JSON-ready dict.
        """
        metadata = dict(metadata, format_version=FORMAT_VERSION)
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                embeddings=ocp.args.StandardSave({"table": np.asarray(table)}),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        if saved:
            logger.info("saved checkpoint %s", self.directory / str(int(step)))
        return saved

    def _resolve_step(self, step):
        if step is not None:
            return int(step)
        step = self.latest_step()
        if step is None:
            raise CheckpointError(f"{self.directory}: contains no complete checkpoint.")
        return step

    def _restore_items(self, step, **items):
        """Restore the named items of one step and check the metadata's format version."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{self.directory / str(step)}: cannot be restored ({type(error).__name__}: {error}). "
                "Pass a checkpoint written by gru_jax, or train again."
            ) from None
        metadata = restored["metadata"]
        if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{self.directory / str(step)}: metadata is missing or of another format version. "
                "Pass a checkpoint written by this version of gru_jax."
            )
        return restored

    def _host_target(self, step):
        """Return NumPy arrays shaped like the saved state, so that restoring puts it in host memory.

        Without a target, orbax puts each array back on the devices it was saved from, which fails
        when they do not exist here, e.g. for a checkpoint saved by a data-parallel run on 4 devices.
        """
        try:
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{self.directory / str(step)}: cannot be restored ({type(error).__name__}: {error}). "
                "Pass a checkpoint written by gru_jax, or train again."
            ) from None
        return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), saved.tree)

    def read_metadata(self, step=None):
        """Read only the metadata dict of a checkpoint (the latest when step is None)."""
        step = self._resolve_step(step)
        return self._restore_items(step, metadata=ocp.args.JsonRestore())["metadata"]

    def restore(self, step=None, state_target=None):
        """Read a checkpoint (the latest when step is None).

        Args:
          state_target: a pytree with the structure of the saved state (for optimizer states, which
            are tuples), or None to get plain nested dicts and lists.

        Returns:
          dict with keys 'step', 'state', 'table' and 'metadata'.
        """
        step = self._resolve_step(step)
        if state_target is None:
            state_target = self._host_target(step)
        restored = self._restore_items(
            step,
            state=ocp.args.StandardRestore(state_target),
            embeddings=ocp.args.StandardRestore(),
            metadata=ocp.args.JsonRestore(),
        )
        return {
            "step": int(step),
            "state": restored["state"],
            "table": np.asarray(restored["embeddings"]["table"], dtype=np.float32),
            "metadata": restored["metadata"],
        }
