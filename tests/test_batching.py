"""Length-bucketed batches: shapes, padding and the order of a pass."""

import numpy as np
import pytest

from gru_jax.batching import BucketedBatcher


def make_batcher(batch_size=8, max_batch_tokens=None, sort_pool=1):
    rng = np.random.default_rng(0)
    # A long tail like the review archives': most sequences short, a few very long.
    lengths = np.concatenate([rng.integers(1, 200, 300), rng.integers(200, 3000, 20)])
    token_ids = [np.arange(1, length + 1, dtype=np.int32) for length in lengths]
    labels = rng.integers(0, 2, len(lengths))
    return BucketedBatcher(token_ids, labels, batch_size, max_batch_tokens, sort_pool=sort_pool), lengths


def test_buckets_share_padded_lengths():
    batcher, _ = make_batcher()

    assert batcher.buckets == (32, 64, 128, 256, 512, 1024, 2048, 4096)
    assert batcher.padded_lengths == [32, 128, 128, 512, 512, 2048, 2048, 8192]
    assert [length for _, length in batcher.shapes] == [32, 128, 512, 2048, 8192]


@pytest.mark.parametrize("shuffle,sort_pool", [(False, 1), (True, 1), (True, 4)])
def test_every_sequence_in_exactly_one_batch(shuffle, sort_pool):
    batcher, lengths = make_batcher(sort_pool=sort_pool)
    rng = np.random.default_rng(1) if shuffle else None

    batches = list(batcher.batches(rng))

    indices = np.concatenate([batch.indices[batch.indices >= 0] for batch in batches])
    assert sorted(indices.tolist()) == list(range(len(lengths)))
    assert len(batches) == len(batcher)
    for batch in batches:
        real = batch.weights > 0
        np.testing.assert_array_equal(batch.lengths[real], lengths[batch.indices[real]])
        assert batch.token_ids.shape in batcher.shapes


def test_only_leftover_batches_mix_buckets():
    batcher, _ = make_batcher()

    batches = list(batcher.batches(np.random.default_rng(2)))

    mixed = [batch for batch in batches
             if len(set(np.searchsorted(batcher.buckets, batch.lengths[batch.weights > 0]).tolist())) > 1]
    partly_filled = [batch for batch in batches if batch.num_real < batch.token_ids.shape[0]]
    # Only batches of leftovers mix buckets, fewer of them than buckets, and at most one has filler rows.
    assert 0 < len(mixed) < len(batcher.buckets)
    assert len(partly_filled) <= 1


def test_leftovers_share_a_batch():
    lengths = [1, 2, 3, 4, 5, 40, 50, 100]
    token_ids = [np.arange(1, length + 1, dtype=np.int32) for length in lengths]
    batcher = BucketedBatcher(token_ids, np.zeros(len(lengths)), batch_size=4)

    batches = list(batcher.batches())

    # One whole batch of the 32-step bucket, then its leftover with those of the 64- and 128-step
    # buckets in one batch shaped for the longest, instead of three partly filled batches.
    assert len(batcher) == 2
    assert [batch.lengths.tolist() for batch in batches] == [[1, 2, 3, 4], [100, 50, 40, 5]]
    assert [batch.token_ids.shape for batch in batches] == [(4, 32), (4, 128)]


def test_max_batch_tokens_limits_padded_rows():
    batcher, _ = make_batcher(max_batch_tokens=4096)

    shapes = {batch.token_ids.shape for batch in batcher.batches(np.random.default_rng(0))}

    assert (2, 2048) in shapes
    for rows, length in shapes:
        assert rows * length <= 4096 or rows == 1


def padded_steps(batches):
    """Return the steps a pass computes when every row of a batch, filler rows too, runs as long as its longest sequence."""
    return sum(int(batch.lengths.max()) * batch.token_ids.shape[0] for batch in batches)


def test_sort_pool_cuts_padding():
    unsorted_batcher, lengths = make_batcher(sort_pool=1)
    sorted_batcher, _ = make_batcher(sort_pool=4)

    unsorted_steps = padded_steps(unsorted_batcher.batches(np.random.default_rng(3)))
    sorted_steps = padded_steps(sorted_batcher.batches(np.random.default_rng(3)))

    # On these lengths, random batches of a bucket compute about 1.29 steps per real step, pools of 4 about 1.22.
    assert unsorted_steps > 1.27 * lengths.sum()
    assert sorted_steps < 1.24 * lengths.sum()


def test_sort_pool_batches_change_each_epoch():
    batcher, _ = make_batcher(sort_pool=4)

    first = {tuple(sorted(batch.indices.tolist())) for batch in batcher.batches(np.random.default_rng(4))}
    second = {tuple(sorted(batch.indices.tolist())) for batch in batcher.batches(np.random.default_rng(5))}

    # Pools are drawn at random, so most batches of one epoch do not occur in the other.
    assert len(first & second) < len(first) // 2


def test_sort_pool_below_one_is_rejected():
    with pytest.raises(ValueError, match="sort_pool = 0 is invalid"):
        make_batcher(sort_pool=0)
