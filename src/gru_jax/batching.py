"""Length-bucketed, padded batches with a bounded set of shapes.

Sequences are grouped by length bucket, and every batch of a bucket has the same shape, so the jitted
steps compile once per shape and never again, however much data there is. Rows that only fill up a
batch have weight 0 and are never counted in losses or metrics.

Each bucket's batches are padded to the length of an even-numbered bucket (bucket k to bucket
k + k % 2), which roughly halves the number of shapes. The recurrent layers stop after the longest
sequence of a batch (see `gru_jax.rnn`), so this padding costs memory but little time. What does cost
time is the spread of lengths inside a batch, because every row runs as long as the batch's longest.
For training, a bucket's shuffled sequences are therefore taken in pools of `sort_pool` batches, and
each pool is sorted by length before it is cut into batches. A batch then contains sequences of
similar length, and the pools, drawn anew each epoch, keep the batches changing.

The sequences that do not fill a whole batch of their bucket are batched together, longest first. Such
a batch takes the shape of its longest sequence's bucket and is filled up with the next shorter ones.
Filler rows run as long as the batch's longest sequence, so one partly filled batch per bucket would
compute many more padded steps.
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
    up to the first one that fits `max_length`."""
    buckets = [int(min_bucket)]
    while buckets[-1] < max_length:
        buckets.append(_next_bucket_length(buckets[-1], growth))
    return tuple(buckets)


def _next_bucket_length(length, growth):
    following = int(np.ceil(length * growth / 8.0) * 8)
    return max(following, length + 8)


def rows_for_bucket(bucket_length, batch_size, max_batch_tokens=None):
    """Return the number of sequences per batch of this padded length: batch_size, or fewer (at least 1)
    when batch_size times the length exceeds max_batch_tokens."""
    if max_batch_tokens is None:
        return int(batch_size)
    return max(1, min(int(batch_size), int(max_batch_tokens) // bucket_length))


def round_up_rows(rows, row_multiple):
    """Round a batch's row count up to a multiple of `row_multiple` (the device count)."""
    return -(-int(rows) // int(row_multiple)) * int(row_multiple)


def _empty_batch(rows, length):
    return Batch(
        token_ids=np.full((rows, length), PADDING_ID, dtype=np.int32),
        lengths=np.ones(rows, dtype=np.int32),
        labels=np.zeros(rows, dtype=np.int32),
        weights=np.zeros(rows, dtype=np.float32),
        indices=np.full(rows, -1, dtype=np.int64),
    )


class BucketedBatcher:
    """Groups sequences of similar length into fixed-shape padded batches.

    Args:
      token_ids: one <int32>[length] array per sequence, each of length at least 1.
      labels: <int32>[num_sequences].
      batch_size: rows per batch.
      max_batch_tokens: upper bound on rows * padded length; a bucket whose padded length times
        batch_size exceeds it gets fewer rows (at least 1), which bounds memory for very long sequences.
      min_bucket, growth: the bucket lengths, see `bucket_lengths_for`.
      row_multiple: every batch's row count is rounded up to a multiple of this (the device count of
        data-parallel steps) with filler rows; the sequences per batch stay as without it.
      sort_pool: when shuffling, batches are cut from pools of this many batches' worth of a bucket's
        shuffled sequences, each pool sorted by length. With 1, each batch's sequences stay at random.
    """

    def __init__(self, token_ids, labels, batch_size, max_batch_tokens=None, min_bucket=32, growth=2.0,
                 row_multiple=1, sort_pool=1):
        if len(token_ids) == 0:
            raise ValueError("no sequences to batch")
        self.token_ids = list(token_ids)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.lengths = np.asarray([len(ids) for ids in self.token_ids], dtype=np.int32)
        if self.lengths.min() < 1:
            raise ValueError("every sequence needs at least one token")
        self.batch_size = int(batch_size)
        if int(sort_pool) < 1:
            raise ValueError(f"sort_pool = {sort_pool} is invalid: it must be at least 1")
        self.sort_pool = int(sort_pool)
        self.buckets = bucket_lengths_for(int(self.lengths.max()), min_bucket, growth)
        self.bucket_of = np.searchsorted(self.buckets, self.lengths, side="left")
        self.padded_lengths = [length if bucket % 2 == 0 else _next_bucket_length(length, growth)
                               for bucket, length in enumerate(self.buckets)]
        self.rows_per_bucket = [rows_for_bucket(length, self.batch_size, max_batch_tokens)
                                for length in self.padded_lengths]
        self.padded_rows_per_bucket = [round_up_rows(rows, row_multiple) for rows in self.rows_per_bucket]
        self._num_batches = None

    def __len__(self):
        """Number of batches in one pass over the data; the same for every order."""
        if self._num_batches is None:
            self._num_batches = len(self._plan(None))
        return self._num_batches

    @property
    def shapes(self):
        """The (rows, padded length) shapes that batches from this batcher can have."""
        used = set(self.bucket_of.tolist())
        return sorted({(self.padded_rows_per_bucket[b], self.padded_lengths[b]) for b in used},
                      key=lambda shape: shape[1])

    def _make_batch(self, bucket, members):
        rows, length = self.padded_rows_per_bucket[bucket], self.padded_lengths[bucket]
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
        leftovers = []
        for bucket in range(len(self.buckets)):
            members = np.flatnonzero(self.bucket_of == bucket)
            rows = self.rows_per_bucket[bucket]
            whole = len(members) - len(members) % rows
            if rng is None:
                members = members[np.argsort(self.lengths[members], kind="stable")]
            else:
                members = rng.permutation(members)
                if self.sort_pool > 1:
                    # Only the whole batches come from sorted pools, so the leftovers stay a random draw.
                    members[:whole] = self._sort_pools(members[:whole], self.sort_pool * rows)
            plan.extend((bucket, members[start : start + rows]) for start in range(0, whole, rows))
            leftovers.append(members[whole:])
        plan.extend(self._batch_leftovers(np.concatenate(leftovers)))
        if rng is not None:
            order = rng.permutation(len(plan))
            plan = [plan[i] for i in order]
        return plan

    def _batch_leftovers(self, members):
        """Batch the sequences that fill no whole batch of their bucket, longest bucket first.

        Each batch takes the bucket and row count of its first, longest member, whose padded length
        fits every later one. The number of batches depends only on how many sequences each bucket
        leaves over, so it is the same in every epoch.
        """
        members = members[np.lexsort((-self.lengths[members], -self.bucket_of[members]))]
        batches = []
        start = 0
        while start < len(members):
            bucket = int(self.bucket_of[members[start]])
            rows = self.rows_per_bucket[bucket]
            batches.append((bucket, members[start : start + rows]))
            start += rows
        return batches

    def _sort_pools(self, members, pool_size):
        """Sort each run of `pool_size` members by length, `pool_size` being a multiple of the batch's rows."""
        pools = np.split(members, range(pool_size, len(members), pool_size))
        return np.concatenate([pool[np.argsort(self.lengths[pool], kind="stable")] for pool in pools])

    def batches(self, rng=None, start=0):
        """Yield the batches of one pass over the data.

        Args:
          rng: a `numpy.random.Generator` to shuffle sequences within buckets and the order of batches;
            None yields the batches sorted by length, for evaluation.
          start: number of batches to skip, to resume a pass in the middle with the same order.
        """
        for bucket, members in self._plan(rng)[start:]:
            yield self._make_batch(bucket, members)


def stream_batches(sequences, batch_size, max_batch_tokens=None, min_bucket=32, growth=2.0, row_multiple=1):
    """Group sequences into fixed-shape padded batches as they arrive, for inputs too large to hold.

    A bucket's batch is yielded as soon as it is full, and the partly filled ones follow at the end,
    so at most one batch per bucket is held at a time. The bucket lengths, padded lengths and rows
    are those of `BucketedBatcher` with the same settings. Labels are left 0, because scoring does not
    read them.

    Args:
      sequences: an iterable of (index, token_ids) pairs, token_ids <int32>[length] with length at
        least 1; index goes to `Batch.indices`.
      batch_size, max_batch_tokens, min_bucket, growth, row_multiple: as for `BucketedBatcher`.

    Yields:
      `Batch`es; filler rows have weight 0 and index -1.
    """
    bucket_lengths = [int(min_bucket)]
    open_batches = {}
    filled = {}
    for index, ids in sequences:
        length = len(ids)
        if length < 1:
            raise ValueError(f"sequence {index} is empty; every sequence needs at least one token")
        while bucket_lengths[-1] < length:
            bucket_lengths.append(_next_bucket_length(bucket_lengths[-1], growth))
        bucket = int(np.searchsorted(bucket_lengths, length, side="left"))

        if bucket not in open_batches:
            padded_length = bucket_lengths[bucket]
            if bucket % 2:
                padded_length = _next_bucket_length(padded_length, growth)
            rows = rows_for_bucket(padded_length, batch_size, max_batch_tokens)
            open_batches[bucket] = (_empty_batch(round_up_rows(rows, row_multiple), padded_length), rows)
            filled[bucket] = 0
        batch, rows = open_batches[bucket]
        row = filled[bucket]
        batch.token_ids[row, :length] = ids
        batch.lengths[row] = length
        batch.weights[row] = 1.0
        batch.indices[row] = index
        filled[bucket] = row + 1

        if filled[bucket] == rows:
            del open_batches[bucket]
            yield batch
    for bucket in sorted(open_batches):
        yield open_batches[bucket][0]
