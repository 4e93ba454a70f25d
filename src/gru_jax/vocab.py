"""Mapping words to integer ids, with counts of what had to be dropped."""

import dataclasses

import numpy as np

PADDING_ID = 0


@dataclasses.dataclass(frozen=True)
class EncodedReviews:
    """Reviews as arrays of token ids, and what encoding removed.

    Attributes:
      token_ids: one <int32>[length] array per review that kept at least one word.
      review_indices: <int64>[num_kept], the position of each kept review in the input list.
      total_tokens: number of words in the input reviews.
      dropped_tokens: words removed because they have no vector.
      truncated_tokens: words removed because a review was longer than `max_length`.
      empty_reviews: number of reviews left with no words, which are skipped.
    """

    token_ids: list
    review_indices: np.ndarray
    total_tokens: int
    dropped_tokens: int
    truncated_tokens: int
    empty_reviews: int

    def summary(self):
        return encoding_summary(self.total_tokens, self.dropped_tokens, self.truncated_tokens, self.empty_reviews)


def encoding_summary(total_tokens, dropped_tokens, truncated_tokens, empty_reviews):
    """Describe what encoding removed, in one line for the log."""
    share = dropped_tokens / max(total_tokens, 1)
    text = (
        f"{dropped_tokens} of {total_tokens} tokens ({share:.1%}) have no vector and were dropped; "
        f"{empty_reviews} reviews became empty and are skipped"
    )
    if truncated_tokens:
        text += f"; {truncated_tokens} tokens were cut by max_length"
    return text


class Vocabulary:
    """Words with vectors, numbered from 1; id 0 is padding."""

    def __init__(self, words):
        self.words = tuple(words)
        self._ids = {word: index + 1 for index, word in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def from_reviews(cls, review_lists, has_vector):
        """Collect the words of `review_lists` (lists of reviews) for which `has_vector(word)` is true.

        The words are sorted so that the ids do not depend on the order of the reviews.
        """
        seen = set()
        for reviews in review_lists:
            for review in reviews:
                seen.update(review)
        return cls(sorted(word for word in seen if has_vector(word)))

    def __len__(self):
        """Number of rows of the embedding table, the padding row included."""
        return len(self.words) + 1

    def __contains__(self, word):
        return word in self._ids

    def encode(self, reviews, max_length=None):
        """Turn reviews into id arrays, dropping unknown words and skipping reviews left empty.

        Args:
          reviews: lists of word strings.
          max_length: keep at most this many known words of each review (the first ones); None keeps all.

        Returns:
          An `EncodedReviews`.
        """
        token_ids, kept = [], []
        total = dropped = truncated = empty = 0
        for index, review in enumerate(reviews):
            ids, review_dropped, review_truncated = self.encode_review(review, max_length)
            total += len(review)
            dropped += review_dropped
            truncated += review_truncated
            if not ids.size:
                empty += 1
                continue
            token_ids.append(ids)
            kept.append(index)
        return EncodedReviews(
            token_ids=token_ids,
            review_indices=np.asarray(kept, dtype=np.int64),
            total_tokens=total,
            dropped_tokens=dropped,
            truncated_tokens=truncated,
            empty_reviews=empty,
        )

    def encode_review(self, review, max_length=None):
        """Encode one review as in `encode`.

        Returns:
          (ids <int32>[length], possibly empty; words dropped for having no vector; words cut by max_length).
        """
        ids = [self._ids[word] for word in review if word in self._ids]
        dropped = len(review) - len(ids)
        truncated = 0
        if max_length is not None and len(ids) > max_length:
            truncated = len(ids) - max_length
            ids = ids[:max_length]
        return np.asarray(ids, dtype=np.int32), dropped, truncated
