"""Rebuilding a trained model from a checkpoint, for evaluation and conversion."""

import dataclasses
from pathlib import Path

import jax

from gru_jax.archives import SentimentArchive
from gru_jax.checkpoints import CheckpointStore, resolve
from gru_jax.embeddings import load_vectors
from gru_jax.errors import CheckpointError, EmbeddingsError
from gru_jax.training import build_model, make_predict
from gru_jax.vocab import Vocabulary


@dataclasses.dataclass
class TrainedModel:
    """A model restored from a checkpoint, ready to score reviews.

    Attributes:
      path: the step directory it was read from.
      model: the `SentimentClassifier`.
      params: its parameters.
      table: <float32>[len(vocabulary), input_size] on the device.
      vocabulary: the words the table covers.
      metadata: the checkpoint's metadata (model settings, config, progress).
      predict: jitted `predict(params, table, token_ids, lengths)`.
    """

    path: Path
    model: object
    params: object
    table: object
    vocabulary: Vocabulary
    metadata: dict
    predict: object

    def training_archive_stub(self):
        """Build an empty archive with the training categories, to compare category names."""
        config = self.metadata["config"]
        return SentimentArchive(Path(config["train_data"]), [], None, None, tuple(self.metadata["category_names"]))


def load_trained_model(path):
    """Restore the model, parameters, vocabulary and embedding table saved at `path`."""
    directory, step = resolve(path)
    restored = CheckpointStore(directory, create=False).restore(step)
    metadata = restored["metadata"]
    try:
        settings = metadata["model"]
        model = build_model(settings["cell"], settings["hidden_size"], settings["num_layers"],
                            metadata.get("config", {}).get("unroll", 1), settings.get("num_classes", 2),
                            loop=metadata.get("config", {}).get("recurrent_loop", "chunked"))
        vocabulary = Vocabulary(metadata["vocabulary"])
        params = restored["state"]["params"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / str(step)}: metadata is incomplete ({error}). Pass a gru_jax checkpoint.") from None
    table = restored["table"]
    if table.shape != (len(vocabulary), settings["input_size"]):
        raise CheckpointError(
            f"{directory / str(step)}: embedding table has shape {table.shape}, expected "
            f"({len(vocabulary)}, {settings['input_size']}) for the stored vocabulary. The checkpoint is damaged."
        )
    return TrainedModel(directory / str(step), model, jax.device_put(params), jax.device_put(table), vocabulary,
                        metadata, make_predict(model))


def load_matching_vectors(trained, path, unicode_errors="strict"):
    """Load a vector file other than the checkpoint's and check that it fits the model.

    Args:
      trained: the `TrainedModel` that will read the vectors.
      path: a vector file in a format `load_vectors` reads.
      unicode_errors: passed to `load_vectors`.

    Returns:
      gensim `KeyedVectors`.

    Raises:
      EmbeddingsError: the file cannot be read or its dimension differs from the model's input size.
    """
    vectors = load_vectors(path, unicode_errors=unicode_errors)
    expected = trained.metadata["model"]["input_size"]
    if vectors.vector_size != expected:
        raise EmbeddingsError(
            f"{path}: the vectors have dimension {vectors.vector_size}, but the checkpoint {trained.path} was "
            f"trained with dimension {expected} ({trained.metadata.get('embeddings_source')}). Pass vectors of "
            f"dimension {expected}."
        )
    return vectors
