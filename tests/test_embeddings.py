import gzip
import shutil

import numpy as np
import pytest
from gensim.models import KeyedVectors

from gru_jax.embeddings import build_table, load_vectors, train_word2vec
from gru_jax.vocab import Vocabulary

WORDS = ["good", "bad", "café", "plot"]


@pytest.fixture()
def vectors():
    keyed = KeyedVectors(vector_size=5)
    values = np.arange(len(WORDS) * 5, dtype=np.float32).reshape(len(WORDS), 5) / 7.0
    keyed.add_vectors(WORDS, values)
    return keyed


def _write(vectors, path):
    name = path.name
    if name.endswith(".kv"):
        vectors.save(str(path))
    elif name.endswith(".bin"):
        vectors.save_word2vec_format(str(path), binary=True)
    elif name.endswith(".bin.gz"):
        raw = path.with_name("raw.bin")
        vectors.save_word2vec_format(str(raw), binary=True)
        with open(raw, "rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    else:
        vectors.save_word2vec_format(str(path), binary=False)
    return path


@pytest.mark.parametrize("name", ["vectors.kv", "vectors.bin", "vectors.bin.gz", "vectors.txt", "vectors.vec"])
def test_each_format_loads(tmp_path, vectors, name):
    loaded = load_vectors(_write(vectors, tmp_path / name))
    assert loaded.vector_size == 5
    assert sorted(loaded.key_to_index) == sorted(WORDS)
    for word in WORDS:
        np.testing.assert_allclose(loaded[word], vectors[word], rtol=1e-6)


def test_text_without_header_loads(tmp_path, vectors):
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{word} {' '.join(str(x) for x in vectors[word])}\n" for word in WORDS))
    loaded = load_vectors(path)
    assert len(loaded) == len(WORDS)
    np.testing.assert_allclose(loaded["plot"], vectors["plot"], rtol=1e-6)


def test_table_keeps_only_data_words(vectors):
    vocabulary = Vocabulary.from_reviews([[["bad", "unknown", "plot"]]], lambda w: w in vectors.key_to_index)
    table = build_table(vocabulary, vectors)
    assert vocabulary.words == ("bad", "plot")
    assert table.shape == (3, 5)
    assert not table[0].any()
    np.testing.assert_array_equal(table[1], vectors["bad"])
    np.testing.assert_array_equal(table[2], vectors["plot"])


def test_encode_counts_dropped_and_empty():
    vocabulary = Vocabulary(["good", "plot"])
    encoded = vocabulary.encode([["good", "xx", "plot"], ["yy", "zz"], ["plot"]])
    assert [ids.tolist() for ids in encoded.token_ids] == [[1, 2], [2]]
    assert encoded.review_indices.tolist() == [0, 2]
    assert encoded.total_tokens == 6
    assert encoded.dropped_tokens == 3
    assert encoded.empty_reviews == 1


def test_word2vec_cache_reused(tmp_path):
    reviews = [["good", "movie", "great", "plot"], ["bad", "movie", "dull", "plot"]] * 20
    first = train_word2vec(reviews, vector_size=8, epochs=2, min_count=1, cache_dir=tmp_path)
    cached = list(tmp_path.glob("word2vec-*.kv"))
    assert len(cached) == 1
    second = train_word2vec(reviews, vector_size=8, epochs=2, min_count=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(first["movie"], second["movie"])
    retrained = train_word2vec(reviews, vector_size=8, epochs=2, min_count=1, cache_dir=None)
    np.testing.assert_array_equal(first["movie"], retrained["movie"])
