"""JAX's persistent compilation cache, with which a second run on the same shapes compiles nothing."""

import logging
from pathlib import Path

import jax

from gru_jax.config import default_cache_dir

logger = logging.getLogger(__name__)


def default_compilation_cache_dir():
    return str(Path(default_cache_dir()) / "jax-compilation-cache")


def enable_compilation_cache(directory):
    """Store compiled XLA programs in `directory` and reuse the ones found there.

    Call it before anything is compiled. JAX reads a cached program only when the JAX and jaxlib
    versions, the device and the program all match. By default JAX (0.10) stores only programs that
    took at least 1 s to compile. This function stores every program, because on the 2-core CPU of
    docs/benchmarks.md a training step compiles in 1 to 2 s and an evaluation step in under 1 s, so
    the default would keep only some of them.
    """
    directory = Path(directory).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    logger.debug("persistent compilation cache in %s", directory)
