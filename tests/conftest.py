"""Shared helpers for the tests: paths of the shipped archives and a writer of Python 2 pickles."""

import gzip
import struct
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "gru_jax" / "data"
TRAIN_3 = DATA_DIR / "sentiment_dataset_train_3.tar.gz"
TEST_3 = DATA_DIR / "sentiment_dataset_test_3.tar.gz"
TRAIN_200 = DATA_DIR / "sentiment_dataset_train_200.tar.gz"
TEST_200 = DATA_DIR / "sentiment_dataset_test_200.tar.gz"


def _python2_opcodes(value, out):
    """Append the pickle opcodes Python 2's cPickle (protocol 2) uses for plain containers and str."""
    if isinstance(value, bytes):
        if len(value) < 256:
            out += b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<i", len(value)) + value  # BINSTRING
    elif isinstance(value, dict):
        out += b"}("  # EMPTY_DICT, MARK
        for key, item in value.items():
            _python2_opcodes(key, out)
            _python2_opcodes(item, out)
        out += b"u"  # SETITEMS
    elif isinstance(value, list):
        out += b"]("  # EMPTY_LIST, MARK
        for item in value:
            _python2_opcodes(item, out)
        out += b"e"  # APPENDS
    elif isinstance(value, tuple):
        out += b"("
        for item in value:
            _python2_opcodes(item, out)
        out += b"t"  # TUPLE
    else:
        raise TypeError(f"no Python 2 opcode for {type(value).__name__}")


def python2_pickle(value):
    """Serialize dicts, lists, tuples and byte strings as Python 2 would, str being bytes there."""
    out = bytearray(b"\x80\x02")
    _python2_opcodes(value, out)
    return bytes(out + b".")


def write_archive(path, content_bytes):
    with gzip.open(path, "wb") as stream:
        stream.write(content_bytes)
    return path


@pytest.fixture(scope="session")
def word2vec_cache(tmp_path_factory):
    """One word2vec cache for the whole session, so each corpus is trained once."""
    return tmp_path_factory.mktemp("word2vec-cache")
