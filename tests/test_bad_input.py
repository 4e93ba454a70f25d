"""Every kind of bad input ends in its own error type, with a message that names the file, the value and
the fix. Nothing from a file is run, and no earlier run is overwritten."""

import argparse
import gzip
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gensim.models import KeyedVectors, Word2Vec

import gru_jax.evaluate
import gru_jax.train
from conftest import TEST_3, TRAIN_3, python2_pickle, write_archive
from gru_jax import training
from gru_jax.archives import check_same_categories, load_archive
from gru_jax.batching import BucketedBatcher
from gru_jax.checkpoints import CheckpointStore
from gru_jax.cli import run_main
from gru_jax.config import make_config
from gru_jax.embeddings import build_table, load_vectors
from gru_jax.errors import ArchiveError, CheckpointError, ConfigError, DivergedError, EmbeddingsError
from gru_jax.experiment import model_metadata, run_training
from gru_jax.model_io import load_trained_model
from gru_jax.pipeline import prepare_data
from gru_jax.training import Trainer
from gru_jax.vocab import Vocabulary
from small_runs import VECTOR_SIZE, small_cli_args, small_config, write_vectors


def assert_message(error, *words):
    message = str(error)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# --- Data archives -------------------------------------------------------------------------------


class Reduces:
    """Pickles as a call of `function(*arguments)`, the way an attacker's archive would."""

    def __init__(self, function, *arguments):
        self.function = function
        self.arguments = arguments

    def __reduce__(self):
        return (self.function, self.arguments)


def _marker_writers(marker):
    """Objects that each create `marker` (or marker.npy) when unpickled by the standard module."""
    return {
        "os.system": Reduces(os.system, f"touch {marker}"),
        "subprocess.Popen": Reduces(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": Reduces(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Reduces(eval, f"open({str(marker)!r}, 'w').close()"),
        "numpy.save": Reduces(np.save, str(marker), np.zeros(1)),
    }


# How each name appears in the message. Protocol 2 uses Python 2's module names (__builtin__, commands).
CALLABLE_NAMES = {
    "os.system": ".system'",
    "subprocess.Popen": ".Popen'",
    "builtins.exec": ".exec'",
    "builtins.eval": ".eval'",
    "numpy.save": "'numpy.save'",
}


@pytest.mark.parametrize("name", sorted(CALLABLE_NAMES))
def test_archive_calling_code_never_runs(tmp_path, name):
    marker = tmp_path / "ran"
    payload = _marker_writers(marker)[name]
    path = write_archive(tmp_path / "evil.tar.gz", pickle.dumps(({"books": [[payload]]}, {}, []), protocol=2))

    with pytest.raises(ArchiveError) as caught:
        load_archive(path)

    assert_message(caught.value, str(path), "tries to load the object", CALLABLE_NAMES[name],
                   "nothing from it was run")
    assert not marker.exists()
    assert not marker.with_suffix(".npy").exists()


# Pickles written opcode by opcode: each tries to reach code in a way that needs no __reduce__.
RAW_PICKLES = {
    "global only": (b"cos\nsystem\n.", "tries to load the object 'os.system'"),
    "inst opcode": (b"(S'touch ran'\nios\nsystem\n.", "tries to load the object 'os.system'"),
    "numpy array": (pickle.dumps(np.arange(3), protocol=2), "multiarray._reconstruct"),
    "numpy string word": (pickle.dumps(({"a": [[np.str_("word")]]}, {}, []), protocol=2), "multiarray.scalar"),
    "extension code": (b"\x80\x02\x82\x01.", "unregistered extension code 1"),
    "reduce of a list": (b"\x80\x02])R.", "not callable"),
    "build on a list": (b"\x80\x02]}b.", "not a valid pickle"),
    "newobj of a list": (b"\x80\x02])\x81.", "must be a type"),
    "persistent id": (b"\x80\x02X\x01\x00\x00\x00aQ.", "refers to an external object"),
}


@pytest.mark.parametrize("name", sorted(RAW_PICKLES))
def test_archive_reaching_for_code_rejected(tmp_path, name):
    content, key_words = RAW_PICKLES[name]
    path = write_archive(tmp_path / "archive.tar.gz", content)

    with pytest.raises(ArchiveError) as caught:
        load_archive(path)

    assert_message(caught.value, str(path), key_words)


def _gzip_bytes_of(content):
    return gzip.compress(content)


def _with_flipped_byte(data, offset):
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


def _with_zero_crc(data):
    # The gzip trailer is the CRC-32 of the content, then its length, 4 bytes each.
    return data[:-8] + b"\x00\x00\x00\x00" + data[-4:]


BAD_ARCHIVES = {
    "not gzip": (lambda: b"plain text, not compressed", "not a gzip file"),
    "truncated gzip": (lambda: TRAIN_3.read_bytes()[:300], "truncated or corrupt"),
    "corrupt deflate data": (lambda: _with_flipped_byte(TRAIN_3.read_bytes(), 200), "truncated or corrupt"),
    "wrong crc": (lambda: _with_zero_crc(_gzip_bytes_of(python2_pickle(({}, {}, [])))),
                  "gzip data is corrupt (CRC check failed"),
    "gzip of text": (lambda: _gzip_bytes_of(b"hello world\n"), "not a valid pickle"),
    "empty gzip": (lambda: _gzip_bytes_of(b""), "not a valid pickle"),
    "tuple of two": (lambda: _gzip_bytes_of(python2_pickle(({}, {}))), "tuple of length 2"),
    "a dict": (lambda: _gzip_bytes_of(pickle.dumps({"books": []})), "holds a dict"),
    "category not a string": (lambda: _gzip_bytes_of(pickle.dumps(({1: [["good"]]}, {}, []))),
                              "category name is 1 of type int, expected a string"),
    "reviews not a dict": (lambda: _gzip_bytes_of(pickle.dumps(([["good"]], {}, []))),
                           "positive reviews are of type list, expected a dict"),
    "category not a list": (lambda: _gzip_bytes_of(pickle.dumps(({"books": "good"}, {}, []))),
                            "reviews of category 'books' are of type str, expected a list of reviews"),
    "review is a string": (lambda: _gzip_bytes_of(pickle.dumps(({"books": ["good book"]}, {}, []))),
                           "review 0 of category 'books' is of type str, expected a list of word strings"),
    "word is a number": (lambda: _gzip_bytes_of(pickle.dumps(({}, {"books": [["bad", 3]]}, []))),
                         "negative review 0 of category 'books' contains 3 of type int"),
    "word is a list": (lambda: _gzip_bytes_of(pickle.dumps(({}, {"books": [[["bad"]]]}, []))),
                       "contains ['bad'] of type list"),
    "no categories": (lambda: _gzip_bytes_of(python2_pickle(({}, {}, []))), "contains no reviews"),
    "only empty categories": (lambda: _gzip_bytes_of(python2_pickle(({b"books": []}, {b"dvd": []}, []))),
                              "contains no reviews"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARCHIVES))
def test_bad_archive_rejected(tmp_path, name):
    make_content, key_words = BAD_ARCHIVES[name]
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(make_content())

    with pytest.raises(ArchiveError) as caught:
        load_archive(path)

    assert_message(caught.value, str(path), key_words)


def test_missing_archive_and_directory(tmp_path):
    with pytest.raises(ArchiveError) as missing:
        load_archive(tmp_path / "absent.tar.gz")
    with pytest.raises(ArchiveError) as directory:
        load_archive(tmp_path)

    assert_message(missing.value, "absent.tar.gz", "file not found")
    assert_message(directory.value, str(tmp_path), "is a directory")


def test_empty_category_warns_and_loads(tmp_path, caplog):
    content = python2_pickle(({b"books": [[b"good"]], b"dvd": []}, {b"books": [[b"bad"]]}, []))
    path = write_archive(tmp_path / "archive.tar.gz", content)

    with caplog.at_level(logging.WARNING, logger="gru_jax.archives"):
        archive = load_archive(path)

    assert len(archive) == 2
    assert "category 'dvd' has no reviews" in caplog.text


def test_test_categories_differ_warns(tmp_path, caplog):
    train = load_archive(TRAIN_3)
    content = python2_pickle(({b"books": [[b"good"]], b"toys": [[b"fun"]]}, {b"toys": [[b"broke"]]}, []))
    test = load_archive(write_archive(tmp_path / "test.tar.gz", content))

    with caplog.at_level(logging.WARNING, logger="gru_jax.archives"):
        check_same_categories(train, test)

    assert "categories ['books', 'toys'] differ from those of the training archive" in caplog.text


# --- Embeddings ----------------------------------------------------------------------------------


def _write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _binary_vectors(path, words=("good", "bad")):
    vectors = KeyedVectors(vector_size=3)
    vectors.add_vectors(list(words), np.ones((len(words), 3), dtype=np.float32))
    vectors.save_word2vec_format(str(path), binary=True)
    return path


BAD_EMBEDDINGS = {
    "missing": (lambda tmp: tmp / "absent.txt", "embeddings file not found"),
    "unknown extension": (lambda tmp: _write_text(tmp / "vectors.json", "{}"), "unknown embeddings extension '.json'"),
    "empty": (lambda tmp: _write_text(tmp / "vectors.txt", ""), "the embeddings file is empty"),
    "header only": (lambda tmp: _write_text(tmp / "vectors.txt", "0 3\n"), "contains no vectors"),
    "short row with header": (lambda tmp: _write_text(tmp / "vectors.txt", "2 3\ngood 1 2 3\nbad 1 2\n"),
                              "line 3 (word 'bad') has 2 values, expected 3"),
    "long row without header": (lambda tmp: _write_text(tmp / "vectors.vec", "good 1 2 3\nbad 1 2 3 4\n"),
                                "line 2 (word 'bad') has 4 values, expected 3"),
    "value not a number": (lambda tmp: _write_text(tmp / "vectors.txt", "good 1 x 3\nbad 1 2 3\n"),
                           "could not convert string to float: 'x'"),
    "count larger than rows": (lambda tmp: _write_text(tmp / "vectors.txt", "5 3\ngood 1 2 3\n"),
                               "unexpected end of input"),
    "binary without header": (lambda tmp: _write_bytes(tmp / "vectors.bin", b"\x87t\xc6:\x85 junk"),
                              "expected word2vec's header line 'count dimension'"),
    "truncated binary": (lambda tmp: _write_bytes(tmp / "cut.bin", _binary_vectors(tmp / "full.bin").read_bytes()[:-5]),
                         "unexpected end of input"),
    "invalid utf-8 in binary": (
        lambda tmp: _write_bytes(tmp / "bad.bin",
                                 _binary_vectors(tmp / "good.bin").read_bytes().replace(b"good", b"go\xffd")),
        "a word is not valid UTF-8 (byte b'\\xff' in b'go\\xffd')"),
    "invalid utf-8 in text": (lambda tmp: _write_bytes(tmp / "bad.txt", b"go\xffd 1 2 3\nbad 1 2 3\n"),
                              "--embeddings-unicode-errors ignore"),
    "not a pickle": (lambda tmp: _write_bytes(tmp / "vectors.kv", b"\x00garbage"), "cannot be read as .kv word vectors"),
    "pickled dict": (lambda tmp: _write_bytes(tmp / "vectors.kv", pickle.dumps({"good": [1.0]})),
                     "contains a dict, expected gensim KeyedVectors"),
}


@pytest.mark.parametrize("name", sorted(BAD_EMBEDDINGS))
def test_bad_embeddings_rejected(tmp_path, name):
    make_path, key_words = BAD_EMBEDDINGS[name]
    path = make_path(tmp_path)

    with pytest.raises(EmbeddingsError) as caught:
        load_vectors(path)

    assert_message(caught.value, str(path), key_words)


def test_invalid_utf8_loads_with_ignore(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(_binary_vectors(tmp_path / "good.bin").read_bytes().replace(b"good", b"go\xffd"))

    vectors = load_vectors(path, unicode_errors="ignore")

    assert sorted(vectors.key_to_index) == ["bad", "god"]


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "builtins.exec", "numpy.save"])
def test_keyed_vectors_calling_code_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / "vectors.kv"
    path.write_bytes(pickle.dumps(_marker_writers(marker)[name], protocol=4))

    with pytest.raises(EmbeddingsError) as caught:
        load_vectors(path)

    assert_message(caught.value, str(path), "tries to load the object", CALLABLE_NAMES[name], "nothing from it was run")
    assert not marker.exists()
    assert not marker.with_suffix(".npy").exists()


def test_whole_word2vec_model_as_kv_rejected(tmp_path):
    model = Word2Vec([["good", "bad"]] * 5, vector_size=4, min_count=1, epochs=1, workers=1)
    path = tmp_path / "model.kv"
    model.save(str(path))

    with pytest.raises(EmbeddingsError) as caught:
        load_vectors(path)

    assert_message(caught.value, str(path), "'gensim.models.word2vec.Word2Vec'", "model.wv.save")


def test_keyed_vectors_naming_pickled_side_files_rejected(tmp_path):
    marker = tmp_path / "ran"
    vectors = KeyedVectors(vector_size=2)
    vectors.add_vectors(["good"], np.ones((1, 2), dtype=np.float32))
    setattr(vectors, "__scipys", ["extra"])
    path = tmp_path / "vectors.kv"
    with open(path, "wb") as stream:
        pickle.dump(vectors, stream, protocol=4)
    # gensim's own loader would unpickle this side file with the standard module.
    (tmp_path / "vectors.kv.extra.npy").write_bytes(pickle.dumps(_marker_writers(marker)["os.system"]))

    with pytest.raises(EmbeddingsError) as caught:
        load_vectors(path)

    assert_message(caught.value, str(path), "'__scipys'", "were not read")
    assert not marker.exists()


def test_keyed_vectors_with_separate_arrays_load(tmp_path):
    vectors = KeyedVectors(vector_size=3)
    vectors.add_vectors(["good", "bad"], np.arange(6, dtype=np.float32).reshape(2, 3))
    path = tmp_path / "vectors.kv"
    vectors.save(str(path), sep_limit=0)

    loaded = load_vectors(path)

    assert (tmp_path / "vectors.kv.vectors.npy").is_file()
    np.testing.assert_array_equal(loaded["bad"], [3, 4, 5])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_vector_rejected(tmp_path, value):
    path = _write_text(tmp_path / "vectors.txt", f"good 1 2 3\nbad 1 {value} 3\n")
    vectors = load_vectors(path)
    vocabulary = Vocabulary.from_reviews([[["good", "bad"]]], lambda word: word in vectors.key_to_index)

    with pytest.raises(EmbeddingsError) as caught:
        build_table(vocabulary, vectors, str(path))

    assert_message(caught.value, str(path), "the vector of 'bad' contains NaN or infinity", "Fix or remove")


def test_vectors_without_data_words_rejected(tmp_path):
    vectors = write_vectors(tmp_path / "vectors.txt", words=["zzxq", "qqzv"])

    with pytest.raises(EmbeddingsError) as caught:
        prepare_data(small_config(tmp_path / "run", vectors))

    assert_message(caught.value, str(vectors), "none of the data's words has a vector")


# --- Reviews -------------------------------------------------------------------------------------


def test_review_of_unknown_words_skipped_and_counted(tmp_path):
    archive = load_archive(TRAIN_3)
    as_bytes = {label: [[word.encode("latin-1") for word in review]
                        for review, review_label in zip(archive.reviews, archive.labels) if review_label == label][:4]
                for label in (0, 1)}
    positive = {b"books": as_bytes[1] + [[b"zzxq", b"qqzv"]]}
    negative = {b"books": as_bytes[0]}
    path = write_archive(tmp_path / "train.tar.gz", python2_pickle((positive, negative, [])))
    vectors = write_vectors(tmp_path / "vectors.txt")

    metrics = run_training(small_config(tmp_path / "run", vectors, train_data=str(path), epochs=1))

    assert metrics["train_skipped_empty_reviews"] == 1
    assert metrics["steps"] == 2  # The 8 kept reviews in batches of 4.
    assert metrics["train_dropped_tokens"] == 2


def test_long_review_truncated_by_max_length():
    vocabulary = Vocabulary(["good", "bad"])
    reviews = [["good"] * 5, ["bad"] * 20000]

    encoded = vocabulary.encode(reviews, max_length=50)
    batcher = BucketedBatcher(encoded.token_ids, [1, 0], batch_size=8)

    assert [len(ids) for ids in encoded.token_ids] == [5, 50]
    assert encoded.truncated_tokens == 20000 - 50
    assert "19950 tokens were cut by max_length" in encoded.summary()
    # 50 words fall in the 64-step bucket, whose batches are padded to the next bucket length.
    assert max(length for _, length in batcher.shapes) == 128


def test_long_review_batch_memory_bounded():
    vocabulary = Vocabulary(["good", "bad"])
    encoded = vocabulary.encode([["good"] * 5] * 30 + [["bad"] * 20000])

    batcher = BucketedBatcher(encoded.token_ids, [1] * 31, batch_size=16, max_batch_tokens=4096)

    # The long review's bucket gets a single row, so no batch contains more padded tokens than that review's
    # bucket length or max_batch_tokens.
    long_rows, long_length = batcher.shapes[-1]
    assert long_rows == 1
    assert 20000 <= long_length < 2 * 20000
    assert batcher.shapes[0] == (16, 32)
    for rows, length in batcher.shapes:
        assert rows * length <= max(4096, length)
    assert max(batch.token_ids.size for batch in batcher.batches()) == long_length


# --- Options -------------------------------------------------------------------------------------


BAD_OPTIONS = {
    "unknown cell": ({"cell": "lstm"}, "cell 'lstm' is unknown. Use one of: gru, pmgru"),
    "zero hidden size": ({"hidden_size": 0}, "hidden-size = 0 is invalid: it must be at least 1"),
    "zero layers": ({"num_layers": 0}, "num-layers = 0 is invalid"),
    "zero epochs": ({"epochs": 0}, "epochs = 0 is invalid: it must be at least 1"),
    "negative epochs": ({"epochs": -2}, "epochs = -2 is invalid"),
    "zero batch size": ({"batch_size": 0}, "batch-size = 0 is invalid"),
    "zero max length": ({"max_length": 0}, "max-length = 0 is invalid"),
    "negative checkpoint interval": ({"checkpoint_every": -1}, "checkpoint-every = -1 is invalid"),
    "zero sort pool": ({"sort_pool": 0}, "sort-pool = 0 is invalid: it must be at least 1"),
    "zero learning rate": ({"learning_rate": 0.0}, "learning-rate = 0.0 is invalid: it must be finite and above 0"),
    "negative learning rate": ({"learning_rate": -0.1}, "learning-rate = -0.1 is invalid"),
    "nan learning rate": ({"learning_rate": float("nan")}, "learning-rate = nan is invalid"),
    "infinite learning rate": ({"learning_rate": float("inf")}, "learning-rate = inf is invalid"),
    "momentum of one": ({"momentum": 1.0}, "momentum = 1.0 is invalid: it must be in [0, 1)"),
    "fractional epochs": ({"epochs": 1.5}, "'epochs' = 1.5 is invalid, expected int"),
    "unknown unicode policy": ({"embeddings_unicode_errors": "skip"}, "embeddings-unicode-errors = 'skip' is invalid"),
}


@pytest.mark.parametrize("name", sorted(BAD_OPTIONS))
def test_bad_option_rejected(name):
    overrides, key_words = BAD_OPTIONS[name]

    with pytest.raises(ConfigError) as caught:
        make_config(None, overrides)

    assert_message(caught.value, key_words)


@pytest.mark.parametrize("text, key_words", [
    ("epochs = 3\nepoch = 2\n", "unknown key 'epoch'"),
    ("epochs = \n", "not valid TOML"),
    ('epochs = "three"\n', "'epochs' = 'three' is invalid, expected int"),
])
def test_bad_config_file_rejected(tmp_path, text, key_words):
    path = _write_text(tmp_path / "settings.toml", text)

    with pytest.raises(ConfigError) as caught:
        make_config(path)

    assert_message(caught.value, str(path), key_words)


def test_batch_size_larger_than_data_clipped(tmp_path, caplog):
    vectors = write_vectors(tmp_path / "vectors.txt")
    config = small_config(tmp_path / "run", vectors, batch_size=100)
    data = prepare_data(config)

    with caplog.at_level(logging.WARNING, logger="gru_jax.training"):
        trainer = Trainer(config, data, tmp_path / "run" / "checkpoints", model_metadata(config, data))

    assert "batch-size 100 is larger than the 24 training reviews; using 24" in caplog.text
    assert trainer.batcher.batch_size == 24
    assert len(trainer.batcher) == 1


# --- Output directory and checkpoints ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished epoch with the test archive, for the checks that need an earlier run."""
    root = tmp_path_factory.mktemp("finished")
    vectors = write_vectors(root / "vectors.txt")
    output_dir = root / "run"
    run_training(small_config(output_dir, vectors, test_data=str(TEST_3), epochs=1))
    return output_dir, vectors


def snapshot(directory):
    """Map each file under `directory` to its bytes."""
    return {path.relative_to(directory): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture()
def earlier_run(tmp_path, finished_run):
    """A private copy of the finished run, and its files before the test."""
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    return output_dir, snapshot(output_dir)


def test_different_run_in_output_dir_refused(earlier_run, finished_run):
    output_dir, before = earlier_run

    with pytest.raises(ConfigError) as caught:
        run_training(small_config(output_dir, finished_run[1], test_data=str(TEST_3), epochs=1, hidden_size=5))

    assert_message(caught.value, str(output_dir), "holds a different run (hidden_size = 4 there, 5 now)",
                   "--overwrite")
    assert snapshot(output_dir) == before


def test_unfinished_run_needs_resume_or_overwrite(earlier_run, finished_run):
    output_dir, _ = earlier_run
    (output_dir / "metrics.json").unlink()
    before = snapshot(output_dir)

    with pytest.raises(ConfigError) as caught:
        run_training(small_config(output_dir, finished_run[1], test_data=str(TEST_3), epochs=1))

    assert_message(caught.value, str(output_dir), "holds an unfinished run", "--resume", "--overwrite")
    assert snapshot(output_dir) == before


def test_overwrite_with_bad_input_keeps_earlier_run(earlier_run, finished_run, tmp_path):
    output_dir, before = earlier_run
    bad_vectors = _write_text(tmp_path / "bad.txt", "good 1 2 3\nbad 1 2\n")

    with pytest.raises(EmbeddingsError):
        run_training(small_config(output_dir, bad_vectors, test_data=str(TEST_3), epochs=1), overwrite=True)

    assert snapshot(output_dir) == before


def test_output_dir_that_is_a_file_refused(tmp_path, finished_run):
    output_file = _write_text(tmp_path / "run", "notes")

    with pytest.raises(ConfigError) as caught:
        run_training(small_config(output_file, finished_run[1]))

    assert_message(caught.value, str(output_file), "is a file, expected a directory")
    assert output_file.read_text() == "notes"


def test_resume_with_other_vector_dimension_refused(earlier_run, finished_run, tmp_path):
    output_dir, before = earlier_run
    config = small_config(output_dir, finished_run[1], test_data=str(TEST_3), epochs=2)
    other = small_config(output_dir, write_vectors(tmp_path / "six.txt", dimension=6), test_data=str(TEST_3))
    data = prepare_data(other)
    trainer = Trainer(config, data, output_dir / "checkpoints", model_metadata(config, data))

    with pytest.raises(EmbeddingsError) as caught:
        trainer.fit(resume=True)

    assert_message(caught.value, "six.txt", f"dimension 6, but the checkpoint in {output_dir / 'checkpoints'}",
                   f"trained with dimension {VECTOR_SIZE}", "--overwrite")
    assert snapshot(output_dir) == before


def test_evaluate_with_other_vector_dimension_refused(finished_run, tmp_path, capsys):
    output_dir, _ = finished_run
    six = write_vectors(tmp_path / "six.txt", dimension=6)

    exit_code = gru_jax.evaluate.main(["--checkpoint", str(output_dir), "--embeddings", str(six)])

    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_code == 2
    assert error_lines == [
        f"error: {six}: the vectors have dimension 6, but the checkpoint "
        f"{output_dir / 'checkpoints' / str(6)} was trained with dimension {VECTOR_SIZE} "
        f"({finished_run[1]}). Pass vectors of dimension {VECTOR_SIZE}."
    ]


def test_evaluate_with_other_vectors_of_same_dimension(finished_run, tmp_path):
    output_dir, _ = finished_run
    other = write_vectors(tmp_path / "other.txt", seed=1)

    assert gru_jax.evaluate.main(["--checkpoint", str(output_dir), "--embeddings", str(other),
                                  "--output", str(tmp_path / "metrics.json")]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["num_reviews"] == 24


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    exit_code = gru_jax.evaluate.main(["--checkpoint", str(tmp_path / "absent")])

    assert exit_code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {tmp_path / 'absent'}: checkpoint not found. Pass a run's output directory or its checkpoints/ "
        "directory."
    )


def test_evaluate_ignores_partial_save(finished_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    partial = output_dir / "checkpoints" / "7.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(output_dir / "checkpoints" / "6", partial)
    shutil.rmtree(partial / "state")

    trained = load_trained_model(output_dir)

    assert trained.path.name == "6"
    # A reader never deletes, since the writer may still be working on it.
    assert partial.is_dir()


def test_damaged_checkpoint_rejected(finished_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    shutil.rmtree(output_dir / "checkpoints" / "6" / "state")

    with pytest.raises(CheckpointError) as caught:
        load_trained_model(output_dir)

    assert_message(caught.value, str(output_dir / "checkpoints" / "6"), "cannot be restored")


# --- Numerical faults ----------------------------------------------------------------------------


def faulty_train_step(fault_step, fault):
    """Wrap make_train_step so that `fault(params, loss)` replaces the result of step `fault_step`."""
    make_train_step = training.make_train_step

    def make_faulty_train_step(model, optimizer):
        train_step = make_train_step(model, optimizer)
        steps_run = [0]

        def step(*args):
            params, opt_state, loss = train_step(*args)
            steps_run[0] += 1
            if steps_run[0] == fault_step:
                params, loss = fault(params, loss)
            return params, opt_state, loss

        return step

    return make_faulty_train_step


def _nan_loss(params, loss):
    return params, jnp.float32(np.nan)


def _nan_params(params, loss):
    return jax.tree.map(lambda leaf: leaf * np.nan, params), loss


@pytest.mark.parametrize("fault, fault_step, message_words, kept_step", [
    (_nan_loss, 5, ["training loss became nan at step 5 (epoch 1)"], 4),
    (_nan_params, 4, ["parameters became NaN or infinite by step 4 (epoch 1)"], 2),
])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, fault, fault_step, message_words, kept_step):
    vectors = write_vectors(tmp_path / "vectors.txt")
    output_dir = tmp_path / "run"
    monkeypatch.setattr(training, "make_train_step", faulty_train_step(fault_step, fault))

    with pytest.raises(DivergedError) as caught:
        run_training(small_config(output_dir, vectors, checkpoint_every=2, log_every=100))

    checkpoint_dir = output_dir.absolute() / "checkpoints"
    assert_message(caught.value, *message_words, f"the last good checkpoint is {checkpoint_dir / str(kept_step)}",
                   "Lower --learning-rate (now 0.05)")
    assert CheckpointStore(checkpoint_dir, create=False).latest_step() == kept_step
    trained = load_trained_model(output_dir)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(trained.params))
    assert not (output_dir / "metrics.json").exists()


# --- Command line: one line on stderr and the exit code ------------------------------------------


def run_cli(module, *args, cwd, debug=False):
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "cache"))
    command = [sys.executable, "-m", module, *args] + (["--debug"] if debug else [])
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_cli_bad_archive_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "archive.tar.gz"
    bad.write_bytes(b"plain text")
    vectors = write_vectors(tmp_path / "vectors.txt")
    args = small_cli_args(tmp_path / "run", vectors, train_data=str(bad))

    result = run_cli("gru_jax.train", *args, cwd=tmp_path)
    debug = run_cli("gru_jax.train", *args, cwd=tmp_path, debug=True)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"error: {bad}: not a gzip file (Not a gzipped file (b'pl')). DLStudio archives are gzip-compressed "
        "pickles despite the .tar.gz name; pass such a file."
    ]
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "run").exists()
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "gru_jax.errors.ArchiveError" in debug.stderr


def test_cli_divergence_exits_1_with_one_line(tmp_path):
    vectors = write_vectors(tmp_path / "vectors.txt")

    result = run_cli("gru_jax.train", *small_cli_args(tmp_path / "run", vectors, learning_rate=1e38), cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert " at step " in lines[0] or " by step " in lines[0]
    assert "Lower --learning-rate (now 1e+38) or set --clip-norm." in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("argv, key_words", [
    (["--learning-rate", "0"], "error: learning-rate = 0.0 is invalid"),
    (["--cell", "lstm"], "error: cell 'lstm' is unknown"),
    (["--resume", "--overwrite"], "error: --resume and --overwrite exclude each other"),
    (["--train-data", "absent.tar.gz"], "error: absent.tar.gz: file not found"),
    (["--embeddings", "absent.txt"], "error: absent.txt: embeddings file not found"),
])
def test_train_main_bad_input_exits_2(tmp_path, monkeypatch, capsys, argv, key_words):
    monkeypatch.chdir(tmp_path)
    vectors = write_vectors(tmp_path / "vectors.txt")
    args = small_cli_args(tmp_path / "run", vectors, cache_dir=str(tmp_path / "cache")) + argv

    exit_code = gru_jax.train.main(args)

    lines = error_lines(capsys.readouterr().err)
    assert exit_code == 2
    assert len(lines) == 1
    assert lines[0].startswith(key_words)


@pytest.mark.parametrize("error, expected", [
    (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.00GiB.\nfull XLA report"),
     "error: the XLA computation failed (RESOURCE_EXHAUSTED: Out of memory allocating 1.00GiB.). If the device "
     "ran out of memory, lower --batch-size, or set --max-length when training."),
    (PermissionError(13, "Permission denied", "/runs/pmgru/metrics.json"),
     "error: /runs/pmgru/metrics.json: Permission denied. Check the path and its permissions."),
    (DivergedError("first line\nsecond line"), "error: first line second line"),
])
def test_run_main_failed_run_one_line(capsys, error, expected):
    def fail(args):
        raise error

    exit_code = run_main(fail, argparse.Namespace(debug=False, verbose=False))

    assert exit_code == 1
    assert capsys.readouterr().err.splitlines() == [expected]
