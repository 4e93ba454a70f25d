"""Word vectors: loading gensim and word2vec files, training in-corpus word2vec, building the table.

Only the rows for words that occur in the data are copied into the model's embedding table, so the
table stays small even for a vector file with millions of words. The vectors are inputs, not
parameters: training never changes them, as in DLStudio.
"""

import gzip
import hashlib
import json
import logging
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from gru_jax.errors import EmbeddingsError

logger = logging.getLogger(__name__)

BINARY_SUFFIXES = (".bin", ".bin.gz")
TEXT_SUFFIXES = (".txt", ".vec", ".txt.gz", ".vec.gz")
KEYED_VECTORS_SUFFIXES = (".kv",)


# Everything a pickled gensim 4 KeyedVectors refers to: the class and numpy's array reconstruction,
# which lives in numpy.core before numpy 2 and in numpy._core from numpy 2 on.
KEYED_VECTORS_GLOBALS = frozenset({
    ("gensim.models.keyedvectors", "KeyedVectors"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
})


class _KeyedVectorsUnpickler(pickle.Unpickler):
    """An unpickler that can build gensim KeyedVectors, numpy arrays and plain containers, and nothing else."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in KEYED_VECTORS_GLOBALS:
            return super().find_class(module, name)
        raise EmbeddingsError(
            f"{self._path}: the .kv file tries to load the object '{module}.{name}', which gensim KeyedVectors "
            "never need; nothing from it was run. Save only the vectors (model.wv.save in gensim 4), or pass "
            "them as .bin or .txt."
        )

    def persistent_load(self, pid):
        raise EmbeddingsError(
            f"{self._path}: the .kv file refers to an external object (persistent id {pid!r}); nothing from it "
            "was run. Save the vectors with gensim 4's KeyedVectors.save, or pass them as .bin or .txt."
        )


def _load_keyed_vectors(path, mmap=None):
    """Load a gensim `KeyedVectors.save` file without running code from it.

    gensim's own `KeyedVectors.load` unpickles with the standard module, which imports and calls whatever
    the file names. This loader allows only the classes in KEYED_VECTORS_GLOBALS, then reads the arrays
    that gensim stores beside the file (`<path>.<attribute>.npy`) with numpy, which rejects pickled arrays.
    """
    from gensim.models import KeyedVectors
    from gensim.utils import SaveLoad

    with open(path, "rb") as stream:
        vectors = _KeyedVectorsUnpickler(stream, path).load()
    if not isinstance(vectors, KeyedVectors):
        raise EmbeddingsError(
            f"{path}: contains a {type(vectors).__name__}, expected gensim KeyedVectors. Save model.wv instead of "
            "the whole model."
        )
    # gensim would unpickle further files for these attributes; KeyedVectors.save never writes them.
    for attribute in ("__scipys", "__recursive_saveloads"):
        if getattr(vectors, attribute, None):
            raise EmbeddingsError(
                f"{path}: lists extra pickled files in '{attribute}', which KeyedVectors never have; they were "
                "not read. Save the vectors with gensim 4's KeyedVectors.save."
            )
    # NOTE: _load_specials is gensim 4's private step of SaveLoad.load; it reads the separate .npy arrays.
    compress, subname = SaveLoad._adapt_by_suffix(str(path))
    vectors._load_specials(str(path), mmap, compress, subname)

    table = getattr(vectors, "vectors", None)
    keys = getattr(vectors, "index_to_key", None)
    if not isinstance(table, np.ndarray) or table.ndim != 2 or not isinstance(keys, list) or len(keys) != len(table):
        raise EmbeddingsError(
            f"{path}: the KeyedVectors are inconsistent (no 2-D vectors array with one row per word). Save the "
            "vectors again with gensim 4's KeyedVectors.save."
        )
    return vectors


def _read_first_line(path, limit=256):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        return stream.readline(limit)


def _check_binary_header(path):
    """Raise EmbeddingsError unless a word2vec binary file starts with its 'count dimension' line."""
    fields = _read_first_line(path).split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        first_bytes = _read_first_line(path, 24)
        raise EmbeddingsError(
            f"{path}: starts with {first_bytes!r}, expected word2vec's header line 'count dimension'. Pass a word2vec "
            "binary file, or a text file with a .txt or .vec extension."
        )


def _find_uneven_row(path):
    """Describe the first row of a text vector file whose number of values differs from the others.

    Returns None when every row has the same number of values.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    expected = None
    with opener(path, "rt", encoding="utf-8", errors="replace") as stream:
        for line_number, line in enumerate(stream, start=1):
            # gensim splits each row on single spaces, word first.
            fields = line.rstrip().split(" ")
            if line_number == 1 and len(fields) == 2 and all(field.isdigit() for field in fields):
                expected = int(fields[1])
                continue
            if expected is None:
                expected = len(fields) - 1
            elif len(fields) - 1 != expected:
                return f"line {line_number} (word '{fields[0]}') has {len(fields) - 1} values, expected {expected}"
    return None


def _suffix_of(path):
    name = path.name.lower()
    for suffix in KEYED_VECTORS_SUFFIXES + BINARY_SUFFIXES + TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def _text_has_header(path):
    """Return whether a text vector file starts with word2vec's 'count dimension' line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as stream:
        fields = stream.readline().split()
    return len(fields) == 2 and all(field.isdigit() for field in fields)


def load_vectors(path, unicode_errors="strict"):
    """Load word vectors from a gensim `.kv`, word2vec binary (`.bin`, `.bin.gz`) or text file.

    Text files (`.txt`, `.vec`, optionally gzip'd) may have word2vec's header line or none (GloVe).

    Args:
      path: the vector file.
      unicode_errors: how to treat words that are not valid UTF-8 in word2vec files, passed to gensim:
        'strict' raises, 'ignore' or 'replace' keep going.

    Returns:
      gensim `KeyedVectors`.

    Raises:
      EmbeddingsError: the file is missing, empty, has an unknown extension, cannot be parsed, or (.kv)
        names a class other than KeyedVectors and numpy arrays.
    """
    from gensim.models import KeyedVectors

    path = Path(os.fspath(path))
    if not path.is_file():
        raise EmbeddingsError(f"{path}: embeddings file not found. Check the --embeddings path.")
    suffix = _suffix_of(path)
    if suffix is None:
        raise EmbeddingsError(
            f"{path}: unknown embeddings extension '{''.join(path.suffixes) or path.name}'. Use .kv (gensim "
            "KeyedVectors), .bin or .bin.gz (word2vec binary), or .txt or .vec (text)."
        )

    if path.stat().st_size == 0:
        raise EmbeddingsError(f"{path}: the embeddings file is empty. Pass a file that contains vectors.")

    try:
        if suffix in KEYED_VECTORS_SUFFIXES:
            vectors = _load_keyed_vectors(path, mmap="r")
        elif suffix in BINARY_SUFFIXES:
            _check_binary_header(path)
            vectors = KeyedVectors.load_word2vec_format(str(path), binary=True, unicode_errors=unicode_errors)
        else:
            vectors = KeyedVectors.load_word2vec_format(
                str(path), binary=False, unicode_errors=unicode_errors, no_header=not _text_has_header(path)
            )
    except EmbeddingsError:
        raise
    except UnicodeDecodeError as error:
        context = error.object[max(error.start - 20, 0) : error.end + 20]
        raise EmbeddingsError(
            f"{path}: a word is not valid UTF-8 (byte {error.object[error.start:error.end]!r} in {context!r}). "
            "Pass --embeddings-unicode-errors ignore or replace to drop or replace such bytes."
        ) from None
    except (ValueError, EOFError, OSError, IndexError, KeyError, AttributeError, TypeError,
            pickle.UnpicklingError) as error:
        uneven_row = _find_uneven_row(path) if suffix in TEXT_SUFFIXES else None
        if uneven_row is not None:
            raise EmbeddingsError(
                f"{path}: {uneven_row}. Every row must hold a word and the same number of values; fix or "
                "remove that row."
            ) from None
        raise EmbeddingsError(
            f"{path}: cannot be read as {suffix} word vectors ({type(error).__name__}: {error}). Check that "
            "the extension matches the format and that the file is complete."
        ) from None

    if vectors.vector_size <= 0 or len(vectors) == 0:
        raise EmbeddingsError(f"{path}: contains no vectors. Pass a non-empty vector file.")
    return vectors


def _corpus_digest(reviews, settings):
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for review in reviews:
        digest.update("\x1f".join(review).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def _stable_hash(text):
    # gensim seeds each word's initial vector with this function. Python's hash() of a str changes
    # from process to process, which would make training differ between runs with the same seed.
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def train_word2vec(reviews, *, vector_size=300, epochs=20, window=5, min_count=2, skip_gram=True,
                   seed=0, cache_dir=None):
    """Train gensim Word2Vec on `reviews`, or reuse the result of an identical earlier call.

    Training uses one worker thread, so the vectors depend only on the reviews and the settings.

    Args:
      reviews: lists of word strings, usually the training split.
      vector_size, epochs, window, min_count: gensim Word2Vec settings.
      skip_gram: True for skip-gram, False for CBOW.
      seed: seed of gensim's random numbers.
      cache_dir: directory for cached vectors (`word2vec-<digest>.kv`); None disables the cache.

    Returns:
      gensim `KeyedVectors`.
    """
    from gensim.models import Word2Vec

    settings = dict(vector_size=vector_size, epochs=epochs, window=window, min_count=min_count,
                    skip_gram=skip_gram, seed=seed, version=1)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"word2vec-{_corpus_digest(reviews, settings)}.kv"
        if cache_path.is_file():
            try:
                vectors = _load_keyed_vectors(cache_path)
                logger.info("reusing cached word2vec vectors %s", cache_path)
                return vectors
            except (EmbeddingsError, OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
                logger.warning("%s: cannot reuse the cached vectors (%s); training them again", cache_path, error)

    logger.info("training word2vec on %d reviews (%s)", len(reviews),
                ", ".join(f"{key}={value}" for key, value in settings.items() if key != "version"))
    model = Word2Vec(
        sentences=reviews,
        vector_size=vector_size,
        sg=1 if skip_gram else 0,
        window=window,
        min_count=min_count,
        epochs=epochs,
        seed=seed,
        workers=1,
        hashfxn=_stable_hash,
    )
    vectors = model.wv
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Save under a temporary name and rename, so that an interrupted save leaves no partial cache entry.
        partial = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.partial")
        vectors.save(str(partial))
        os.replace(partial, cache_path)
        logger.info("cached word2vec vectors in %s", cache_path)
    return vectors


def build_table(vocabulary, vectors, source="embeddings"):
    """Copy the vectors of the vocabulary's words into a table whose row 0 is zero padding.

    Args:
      vocabulary: a `Vocabulary` whose words all have vectors.
      vectors: gensim `KeyedVectors`.
      source: the vectors' file, for error messages.

    Returns:
      <float32>[len(vocabulary), vectors.vector_size].

    Raises:
      EmbeddingsError: the vocabulary is empty or a vector contains NaN or infinity.
    """
    if len(vocabulary.words) == 0:
        raise EmbeddingsError(
            f"{source}: none of the data's words has a vector, so every review would be empty. Use "
            "vectors trained on text in the same language and tokenization (lower-case words)."
        )
    table = np.zeros((len(vocabulary), vectors.vector_size), dtype=np.float32)
    table[1:] = np.asarray(vectors[list(vocabulary.words)], dtype=np.float32)
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        bad_row = int(np.argmin(finite))
        raise EmbeddingsError(
            f"{source}: the vector of '{vocabulary.words[bad_row - 1]}' contains NaN or infinity "
            f"({int((~finite).sum())} such vectors). Fix or remove those rows of the vector file."
        )
    return table
