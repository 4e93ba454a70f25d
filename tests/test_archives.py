import gzip
import os
import pickle

import numpy as np
import pytest

from conftest import TRAIN_3, python2_pickle, write_archive
from gru_jax.archives import NEGATIVE, POSITIVE, load_archive
from gru_jax.errors import ArchiveError


def test_python2_pickle_with_byte_strings(tmp_path):
    positive = {b"books": [[b"a", b"caf\xe9", b"great"]], b"dvd": [[b"fun"]]}
    negative = {b"books": [[b"dull"], [b"bad", b"plot"]], b"dvd": []}
    path = write_archive(tmp_path / "archive.tar.gz", python2_pickle((positive, negative, [b"a", b"great"])))

    archive = load_archive(path)

    assert archive.category_names == ("books", "dvd")
    assert archive.reviews == [["a", "café", "great"], ["dull"], ["bad", "plot"], ["fun"]]
    assert archive.labels.tolist() == [POSITIVE, NEGATIVE, NEGATIVE, POSITIVE]
    assert [archive.category_of(i) for i in range(len(archive))] == ["books", "books", "books", "dvd"]


def test_shipped_debug_archive_layout():
    archive = load_archive(TRAIN_3)
    assert len(archive) == 24
    assert archive.category_names == ("books", "dvd", "electronics", "kitchen_&_housewares")
    assert (archive.labels == POSITIVE).sum() == 12
    assert np.bincount(archive.categories).tolist() == [6, 6, 6, 6]
    assert all(isinstance(word, str) for review in archive.reviews for word in review)


class _CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(({"books": [[_CallsSystem(marker)]]}, {}, []), protocol=2)
    path = write_archive(tmp_path / "evil.tar.gz", payload)

    with pytest.raises(ArchiveError) as caught:
        load_archive(path)

    assert "posix.system" in str(caught.value) or "os.system" in str(caught.value)
    assert "nothing from it was run" in str(caught.value)
    assert not marker.exists()


def test_not_gzip_rejected(tmp_path):
    path = tmp_path / "plain.tar.gz"
    path.write_bytes(b"not compressed at all")
    with pytest.raises(ArchiveError, match="not a gzip file"):
        load_archive(path)


def test_wrong_tuple_length_rejected(tmp_path):
    path = write_archive(tmp_path / "two.tar.gz", python2_pickle(({}, {})))
    with pytest.raises(ArchiveError, match="tuple of length 2"):
        load_archive(path)


def test_gzip_member_is_valid(tmp_path):
    # A reader that got the gzip layer wrong would fail on the shipped file before parsing the pickle.
    with gzip.open(TRAIN_3) as stream:
        assert stream.read(2) == b"\x80\x02"
