"""GRU and pmGRU sentiment classifiers in JAX/Flax."""

__version__ = "0.1.0"
