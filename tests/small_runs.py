"""Small training setups for the robustness tests: 8-dimensional vectors for the debug archives, and
settings under which every batch has one shape, so that a run compiles once and takes seconds."""

import numpy as np

from conftest import TEST_3, TRAIN_3
from gru_jax.archives import load_archive
from gru_jax.config import make_config

VECTOR_SIZE = 8
SETTINGS = {
    "hidden_size": 4,
    "batch_size": 4,
    "learning_rate": 0.05,
    "max_length": 30,  # Every review fits the smallest bucket (32 steps).
    "log_every": 2,
    "epochs": 2,
}


def debug_archive_words():
    return sorted({word for path in (TRAIN_3, TEST_3) for review in load_archive(path).reviews for word in review})


def write_vectors(path, dimension=VECTOR_SIZE, words=None, seed=0):
    """Write a headerless text vector file with one random vector per word of the debug archives."""
    words = debug_archive_words() if words is None else words
    values = np.random.default_rng(seed).normal(size=(len(words), dimension)).astype(np.float32)
    with open(path, "w", encoding="utf-8") as stream:
        for word, vector in zip(words, values):
            stream.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")
    return path


def small_config(output_dir, vectors, *, test_data="", **overrides):
    """A validated TrainConfig on the debug training archive; `test_data=''` skips the test pass."""
    values = dict(SETTINGS, train_data=str(TRAIN_3), test_data=test_data, embeddings=str(vectors),
                  output_dir=str(output_dir), cache_dir=str(output_dir) + "-cache")
    values.update(overrides)
    return make_config(None, values)


def small_cli_args(output_dir, vectors, *, test_data="", **overrides):
    """The `python -m gru_jax.train` arguments that give `small_config(output_dir, vectors, ...)`."""
    values = dict(SETTINGS, train_data=str(TRAIN_3), test_data=test_data, embeddings=str(vectors),
                  output_dir=str(output_dir), cache_dir=str(output_dir) + "-cache")
    values.update(overrides)
    args = []
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args
