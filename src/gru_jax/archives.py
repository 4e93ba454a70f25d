"""Reading DLStudio sentiment archives without running code from them.

A DLStudio archive (`sentiment_dataset_{train,test}_N.tar.gz`) is, despite its name, a gzip file that
contains a Python 2 pickle of `(positive_reviews, negative_reviews, vocab)`. The first two map a
product category to a list of reviews, and a review is a list of word strings. The standard `pickle`
module would import and call whatever the file names, so this module unpickles with a loader that
can only build dicts, lists, tuples, sets, strings and numbers, and then checks the layout.
"""

import dataclasses
import gzip
import io
import logging
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from gru_jax.errors import ArchiveError

logger = logging.getLogger(__name__)

NEGATIVE = 0
POSITIVE = 1
CLASS_NAMES = ("negative", "positive")


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rejects every opcode that would import or call something."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        # Every way to call code from a pickle (GLOBAL, STACK_GLOBAL, the extension registry, and so
        # REDUCE, BUILD, NEWOBJ and INST) needs an object that this method returns.
        raise ArchiveError(
            f"{self._path}: the archive tries to load the object '{module}.{name}', which a sentiment "
            "archive never needs; nothing from it was run. Use an archive that holds only dicts, lists "
            "and strings."
        )

    def persistent_load(self, pid):
        raise ArchiveError(
            f"{self._path}: the archive refers to an external object (persistent id {pid!r}); nothing "
            "from it was run. Use an archive that holds only dicts, lists and strings."
        )


@dataclasses.dataclass(frozen=True)
class SentimentArchive:
    """The reviews of one archive, flattened into parallel arrays.

    Attributes:
      path: the file the reviews were read from.
      reviews: one list of words per review.
      labels: <int32>[num_reviews], 0 for negative and 1 for positive (DLStudio's class order).
      categories: <int32>[num_reviews], index of each review's product category in `category_names`.
      category_names: the product categories, sorted.
    """

    path: Path
    reviews: list
    labels: np.ndarray
    categories: np.ndarray
    category_names: tuple

    def __len__(self):
        return len(self.reviews)

    def category_of(self, index):
        return self.category_names[int(self.categories[index])]


def _as_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


def _check_reviews(path, polarity, reviews_by_category):
    if not isinstance(reviews_by_category, dict):
        raise ArchiveError(
            f"{path}: the {polarity} reviews are of type {type(reviews_by_category).__name__}, expected a "
            "dict that maps each product category to a list of reviews. Rebuild the archive in DLStudio's layout."
        )
    checked = {}
    for category, reviews in reviews_by_category.items():
        category_name = _as_text(category)
        if category_name is None:
            raise ArchiveError(
                f"{path}: a {polarity} category name is {category!r} of type {type(category).__name__}, "
                "expected a string. Rebuild the archive with string category names."
            )
        if not isinstance(reviews, (list, tuple)):
            raise ArchiveError(
                f"{path}: the {polarity} reviews of category '{category_name}' are of type "
                f"{type(reviews).__name__}, expected a list of reviews."
            )
        words_per_review = []
        for review_index, review in enumerate(reviews):
            if not isinstance(review, (list, tuple)):
                raise ArchiveError(
                    f"{path}: {polarity} review {review_index} of category '{category_name}' is of type "
                    f"{type(review).__name__}, expected a list of word strings."
                )
            words = [_as_text(word) for word in review]
            if any(word is None for word in words):
                bad = next(word for word, text in zip(review, words) if text is None)
                raise ArchiveError(
                    f"{path}: {polarity} review {review_index} of category '{category_name}' contains "
                    f"{bad!r} of type {type(bad).__name__}, expected only word strings."
                )
            words_per_review.append(words)
        checked[category_name] = words_per_review
    return checked


def _unpickle(path):
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise ArchiveError(f"{path}: file not found. Pass the path of a sentiment_dataset_*.tar.gz archive.") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path}: is a directory, expected a sentiment_dataset_*.tar.gz archive file.") from None
    except gzip.BadGzipFile as error:
        with open(path, "rb") as stream:
            starts_as_gzip = stream.read(2) == b"\x1f\x8b"
        if starts_as_gzip:
            # It starts as gzip does, so a CRC, a length or a later member is damaged.
            raise ArchiveError(
                f"{path}: the gzip data is corrupt ({error}). Download or copy the archive again."
            ) from None
        raise ArchiveError(
            f"{path}: not a gzip file ({error}). DLStudio archives are gzip-compressed pickles despite "
            "the .tar.gz name; pass such a file."
        ) from None
    except (EOFError, zlib.error) as error:
        raise ArchiveError(
            f"{path}: the gzip data is truncated or corrupt ({error}). Download or copy the archive again."
        ) from None
    except OSError as error:
        raise ArchiveError(f"{path}: cannot be read ({error.strerror}). Check the file's permissions.") from None

    try:
        return _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except ArchiveError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, RecursionError, UnicodeDecodeError) as error:
        raise ArchiveError(
            f"{path}: the gzip data is not a valid pickle ({type(error).__name__}: {error}). "
            "Pass a DLStudio sentiment archive."
        ) from None


def load_archive(path):
    """Read a DLStudio sentiment archive and validate its layout.

    Args:
      path: path of a `sentiment_dataset_*.tar.gz` file.

    Returns:
      A `SentimentArchive` whose reviews are ordered by sorted category, positive before negative.

    Raises:
      ArchiveError: the file is missing, not gzip, not a pickle, tries to load any object, or does not
        have the `(positive_reviews, negative_reviews, vocab)` layout.
    """
    path = Path(os.fspath(path))
    content = _unpickle(path)

    if not isinstance(content, (tuple, list)) or len(content) != 3:
        found = f"a {type(content).__name__}"
        if isinstance(content, (tuple, list)):
            found += f" of length {len(content)}"
        raise ArchiveError(
            f"{path}: the archive holds {found}, expected a tuple (positive_reviews, negative_reviews, "
            "vocab). Rebuild it in DLStudio's layout."
        )
    positive = _check_reviews(path, "positive", content[0])
    negative = _check_reviews(path, "negative", content[1])

    category_names = tuple(sorted(set(positive) | set(negative)))
    reviews, labels, categories = [], [], []
    for category_index, name in enumerate(category_names):
        count = 0
        for label, by_category in ((POSITIVE, positive), (NEGATIVE, negative)):
            for review in by_category.get(name, []):
                reviews.append(review)
                labels.append(label)
                categories.append(category_index)
                count += 1
        if count == 0:
            logger.warning("%s: category '%s' has no reviews", path, name)

    if not reviews:
        raise ArchiveError(f"{path}: the archive contains no reviews. Pass an archive with at least one review.")
    return SentimentArchive(
        path=path,
        reviews=reviews,
        labels=np.asarray(labels, dtype=np.int32),
        categories=np.asarray(categories, dtype=np.int32),
        category_names=category_names,
    )


def check_same_categories(train, test):
    """Log a warning when the test archive's categories differ from the training archive's."""
    if set(train.category_names) != set(test.category_names):
        logger.warning(
            "%s: categories %s differ from those of the training archive %s (%s); per-category results "
            "cover the test categories only",
            test.path, list(test.category_names), train.path, list(train.category_names),
        )
