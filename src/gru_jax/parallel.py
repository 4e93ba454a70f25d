"""Data-parallel placement of arrays across devices with `jax.sharding`.

With more than one device, parameters, optimizer state and the embedding table are replicated on
every device of a one-axis mesh, and each batch is split along that axis. `jax.jit` then runs one
copy of the step per device and all-reduces the gradients. A batch's row count must be a multiple of
the device count, so the batchers round it up with filler rows of weight 0 (`row_multiple`). The
weighted-mean loss and the metrics therefore equal those on one device up to float32 summation order.

With one device, arrays are placed as plain `jax.jit` places them.

Across hosts (after `jax.distributed.initialize`), the mesh spans the devices of every process.
Every process builds the same global batches from the same data and seed, and contributes the rows
that belong to its own devices.
"""

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gru_jax.errors import RunError

logger = logging.getLogger(__name__)

DATA_AXIS = "data"


class DataParallel:
    """The devices a run uses and how arrays are placed on them.

    Args:
      devices: the devices to use; None uses `jax.devices()`, the devices of all processes.

    Attributes:
      devices: the devices, in mesh order.
      num_devices: how many; every batch's row count is a multiple of it.
      mesh: a `jax.sharding.Mesh` with the single axis 'data', or None with one device.
    """

    def __init__(self, devices=None):
        self.devices = tuple(jax.devices() if devices is None else devices)
        if not self.devices:
            raise ValueError("DataParallel needs at least one device")
        self.num_devices = len(self.devices)
        self.mesh = None
        if self.num_devices > 1:
            self.mesh = Mesh(np.asarray(self.devices), (DATA_AXIS,))
            self._replicated = NamedSharding(self.mesh, PartitionSpec())
            self._split = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def is_parallel(self):
        return self.mesh is not None

    def describe(self):
        kinds = sorted({device.platform for device in self.devices})
        text = f"{self.num_devices} {'/'.join(kinds)} device{'s' if self.num_devices > 1 else ''}"
        if jax.process_count() > 1:
            text += f" in {jax.process_count()} processes"
        return text

    def replicate(self, tree):
        """Copy every array of `tree` to every device; with one device, move it to that device."""
        if not self.is_parallel:
            return jax.device_put(tree, self.devices[0])
        return jax.tree.map(lambda array: self._place(np.asarray(array), self._replicated), tree)

    def split_batch(self, arrays):
        """Split each array of a batch along its first axis (rows) across the devices.

        Args:
          arrays: a tuple of NumPy arrays of shape [rows, ...], rows a multiple of `num_devices`.

        Returns:
          The same arrays, unchanged with one device (jit copies them), else as global `jax.Array`s.
        """
        if not self.is_parallel:
            return arrays
        rows = arrays[0].shape[0]
        if rows % self.num_devices:
            raise ValueError(f"a batch of {rows} rows cannot be split evenly across {self.num_devices} devices")
        return tuple(self._place(array, self._split) for array in arrays)

    def fetch(self, array):
        """Copy a result to host memory as a NumPy array, gathering rows held by other processes."""
        if jax.process_count() > 1 and not array.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(array, tiled=True))
        return np.asarray(array)

    @staticmethod
    def _place(array, sharding):
        if jax.process_count() == 1:
            return jax.device_put(array, sharding)
        # Every process has the whole array and transfers only the parts that its own devices store.
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """Join a multi-process JAX run. Call it before any other JAX call of the process.

    `jax.distributed.initialize` detects arguments left as None on Cloud TPU, Slurm and Open MPI.
    Elsewhere all three must be given.
    """
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError) as error:
        raise RunError(
            f"jax.distributed.initialize failed ({error}). Check --coordinator-address, --num-processes and "
            "--process-id, and that every process was started."
        ) from None
    logger.info("process %d of %d; %d local and %d global devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
