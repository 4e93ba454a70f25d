"""Saving and restoring runs with orbax, with what is needed to rebuild the model and vocabulary.

A run's `checkpoints/` directory holds one orbax step directory per save. Orbax writes each save to a
temporary directory and renames it when complete, so a process killed mid-save leaves the earlier
checkpoints intact, and the temporary directory is never listed as a step.

Each step directory holds three items:
  state       params, optimizer state and step (orbax StandardSave)
  embeddings  the embedding table, <float32>[vocabulary size, input size]
  metadata    JSON: model settings, vocabulary words, training progress and the run's config
"""

import logging
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from gru_jax.errors import CheckpointError

logger = logging.getLogger(__name__)

ITEMS = ("state", "embeddings", "metadata")
FORMAT_VERSION = 1


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
      create: create the directory if it is missing.
    """

    def __init__(self, directory, max_to_keep=2, create=True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

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

    def restore(self, step=None, state_target=None):
        """Read a checkpoint (the latest when step is None).

        Args:
          state_target: a pytree with the structure of the saved state (for optimizer states, which
            are tuples), or None to get plain nested dicts and lists.

        Returns:
          dict with keys 'step', 'state', 'table' and 'metadata'.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"{self.directory}: contains no complete checkpoint.")
        try:
            restored = self._manager.restore(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(state_target),
                    embeddings=ocp.args.StandardRestore(),
                    metadata=ocp.args.JsonRestore(),
                ),
            )
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
        return {
            "step": int(step),
            "state": restored["state"],
            "table": np.asarray(restored["embeddings"]["table"], dtype=np.float32),
            "metadata": metadata,
        }
