"""Length-bucketed, padded batches with a bounded set of shapes.

Every batch is padded to one of a few bucket lengths and always has the same number of rows for its
bucket, so the jitted steps compile once per bucket and never again, however much data there is.
Rows that only fill up a batch have weight 0 and are never counted in losses or metrics.
"""

import dataclasses

import numpy as np

from gru_jax.vocab import PADDING_ID


@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded batch of reviews.

    Attributes:
      token_ids: <int32>[batch, time], PADDING_ID after each review's end.
      lengths: <int32>[batch], real steps per row; filler rows have length 1.
      labels: <int32>[batch].
      weights: <float32>[batch], 1 for real reviews, 0 for filler rows.
      indices: <int64>[batch], position of each row's review in the encoded data, -1 for filler rows.
    """

    token_ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    indices: np.ndarray

    @property
    def num_real(self):
        return int(self.weights.sum())

    @property
    def num_real_tokens(self):
        return int(self.lengths[self.weights > 0].sum())


def bucket_lengths_for(max_length, min_bucket=32, growth=2.0):
    """Return the padded lengths: min_bucket, then each times `growth` (rounded up to a multiple of 8),
    up to the first one that holds `max_length`."""
    buckets = [int(min_bucket)]
    while buckets[-1] < max_length:
        following = int(np.ceil(buckets[-1] * growth / 8.0) * 8)
        buckets.append(max(following, buckets[-1] + 8))
    return tuple(buckets)


class BucketedBatcher:
    """Groups sequences of similar length into fixed-shape padded batches.

    Args:
      token_ids: one <int32>[length] array per sequence, each of length at least 1.
      labels: <int32>[num_sequences].
      batch_size: rows per batch.
      max_batch_tokens: upper bound on rows * padded length; a bucket whose length times batch_size
        exceeds it gets fewer rows (at least 1), which bounds memory for very long sequences.
      min_bucket, growth: the bucket lengths, see `bucket_lengths_for`.
    """

    def __init__(self, token_ids, labels, batch_size, max_batch_tokens=None, min_bucket=32, growth=2.0):
        if len(token_ids) == 0:
            raise ValueError("no sequences to batch")
        self.token_ids = list(token_ids)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.lengths = np.asarray([len(ids) for ids in self.token_ids], dtype=np.int32)
        if self.lengths.min() < 1:
            raise ValueError("every sequence needs at least one token")
        self.batch_size = int(batch_size)
        self.buckets = bucket_lengths_for(int(self.lengths.max()), min_bucket, growth)
        self.bucket_of = np.searchsorted(self.buckets, self.lengths, side="left")
        self.rows_per_bucket = []
        for bucket_length in self.buckets:
            rows = self.batch_size
            if max_batch_tokens is not None:
                rows = max(1, min(rows, int(max_batch_tokens) // bucket_length))
            self.rows_per_bucket.append(rows)

    def __len__(self):
        """Number of batches in one pass over the data."""
        counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
        return int(sum(-(-count // rows) for count, rows in zip(counts, self.rows_per_bucket)))

    @property
    def shapes(self):
        """The (rows, padded length) shapes that batches from this batcher can have."""
        used = sorted(set(self.bucket_of.tolist()))
        return [(self.rows_per_bucket[b], self.buckets[b]) for b in used]

    def _make_batch(self, bucket, members):
        rows, length = self.rows_per_bucket[bucket], self.buckets[bucket]
        token_ids = np.full((rows, length), PADDING_ID, dtype=np.int32)
        lengths = np.ones(rows, dtype=np.int32)
        labels = np.zeros(rows, dtype=np.int32)
        weights = np.zeros(rows, dtype=np.float32)
        indices = np.full(rows, -1, dtype=np.int64)
        for row, index in enumerate(members):
            ids = self.token_ids[index]
            token_ids[row, : len(ids)] = ids
            lengths[row] = len(ids)
            labels[row] = self.labels[index]
            weights[row] = 1.0
            indices[row] = index
        return Batch(token_ids, lengths, labels, weights, indices)

    def _plan(self, rng):
        """List (bucket, member indices) for every batch of one pass; shuffled when rng is given."""
        plan = []
        for bucket in range(len(self.buckets)):
            members = np.flatnonzero(self.bucket_of == bucket)
            if rng is not None:
                members = rng.permutation(members)
            else:
                members = members[np.argsort(self.lengths[members], kind="stable")]
            rows = self.rows_per_bucket[bucket]
            plan.extend((bucket, members[start : start + rows]) for start in range(0, len(members), rows))
        if rng is not None:
            order = rng.permutation(len(plan))
            plan = [plan[i] for i in order]
        return plan

    def batches(self, rng=None, start=0):
        """Yield the batches of one pass over the data.

        Args:
          rng: a `numpy.random.Generator` to shuffle sequences within buckets and the order of batches;
            None yields the batches sorted by length, for evaluation.
          start: number of batches to skip, to resume a pass in the middle with the same order.
        """
        for bucket, members in self._plan(rng)[start:]:
            yield self._make_batch(bucket, members)
