"""From archives and word vectors to encoded reviews and an embedding table."""

import dataclasses
import logging

from gru_jax.archives import check_same_categories, load_archive
from gru_jax.embeddings import build_table, load_vectors, train_word2vec
from gru_jax.errors import EmbeddingsError
from gru_jax.vocab import Vocabulary

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    """Everything training and evaluation read, built once per run.

    Attributes:
      vocabulary: the words of the data that have vectors.
      table: <float32>[len(vocabulary), input_size], row 0 zero padding.
      embeddings_source: the vector file, or a description of the in-corpus word2vec.
      train, test: the archives (test is None without test data).
      train_encoded, test_encoded: their reviews as token ids (`EncodedReviews`).
    """

    vocabulary: Vocabulary
    table: object
    embeddings_source: str
    train: object
    test: object
    train_encoded: object
    test_encoded: object

    @property
    def input_size(self):
        return int(self.table.shape[1])


def load_word_vectors(config, train_reviews):
    """Load the configured vector file, or train word2vec on the training reviews (cached)."""
    if config.embeddings:
        return load_vectors(config.embeddings, unicode_errors=config.embeddings_unicode_errors), str(config.embeddings)
    vectors = train_word2vec(
        train_reviews,
        vector_size=config.word2vec_size,
        epochs=config.word2vec_epochs,
        window=config.word2vec_window,
        min_count=config.word2vec_min_count,
        skip_gram=config.word2vec_skip_gram,
        seed=config.resolved_word2vec_seed(),
        cache_dir=config.cache_dir,
    )
    return vectors, f"word2vec trained on {config.train_data}"


def encode_archive(vocabulary, archive, max_length, source):
    """Encode an archive's reviews and log what was dropped; raise when no review keeps a word."""
    encoded = vocabulary.encode(archive.reviews, max_length)
    logger.info("%s: %s", archive.path, encoded.summary())
    if not encoded.token_ids:
        raise EmbeddingsError(
            f"{source}: no word of {archive.path} has a vector, so every review is empty. Use vectors that "
            "cover the data's words."
        )
    return encoded


def prepare_data(config):
    """Read the archives, get word vectors, and build the vocabulary, table and encoded reviews."""
    train = load_archive(config.train_data)
    test = load_archive(config.test_data) if config.test_data else None
    if test is not None:
        check_same_categories(train, test)
    logger.info("%s: %d reviews in %d categories", train.path, len(train), len(train.category_names))

    vectors, source = load_word_vectors(config, train.reviews)
    review_lists = [train.reviews] + ([test.reviews] if test is not None else [])
    vocabulary = Vocabulary.from_reviews(review_lists, lambda word: word in vectors.key_to_index)
    table = build_table(vocabulary, vectors, source)
    logger.info("vocabulary: %d words with %d-dimensional vectors", len(vocabulary) - 1, table.shape[1])

    train_encoded = encode_archive(vocabulary, train, config.max_length, source)
    test_encoded = encode_archive(vocabulary, test, config.max_length, source) if test is not None else None
    return PreparedData(vocabulary, table, source, train, test, train_encoded, test_encoded)
