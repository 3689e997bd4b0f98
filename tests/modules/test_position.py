"""ofa/modules/position.py: properties of the 1-D token and 2-D image relative buckets, image position ids
and the per-layer bias tables (the exact values are checked against fairseq's in test_parity.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ofa.modules.position import decoder_image_position_idx, encoder_image_position_ids, image_bucket_table
from ofa.modules.position import image_buckets, rel_pos_tables, token_bucket_table, token_buckets


@pytest.mark.parametrize("bucket_size, max_position", [(16, 64), (256, 1024), (8, 2000)])
def test_token_buckets_range_center_and_symmetry(bucket_size, max_position):
    table = token_bucket_table(bucket_size, max_position)  # indexed by distance + max_position - 1
    assert table.shape == (2 * max_position - 1,)
    assert table.min() >= 0 and table.max() <= 2 * bucket_size - 2
    center = bucket_size - 1
    assert table[max_position - 1] == center  # distance 0
    assert torch.equal(table + table.flip(0), torch.full_like(table, 2 * center))  # bucket(-d) mirrors bucket(d)
    assert (table.diff() >= 0).all()  # monotone in the distance


def test_token_buckets_exact_near_and_logarithmic_far():
    bucket_size, max_position = 16, 512
    table = token_bucket_table(bucket_size, max_position)
    dist = torch.arange(-(max_position - 1), max_position)
    near = dist.abs() < bucket_size // 2
    assert torch.equal(table[near], dist[near] + bucket_size - 1)  # one bucket per distance
    far = table[dist >= bucket_size // 2]
    assert far.unique().numel() < far.numel() // 10  # far distances share buckets


def test_token_buckets_saturate_beyond_the_log_range():
    """fairseq scales the log buckets by 1024 positions: longer distances share the outermost buckets."""
    table = token_bucket_table(8, 2000)
    assert table[0] == 0 and table[-1] == 14
    assert (table[:500] == 0).all() and (table[-500:] == 14).all()


def test_token_buckets_depend_only_on_the_distance():
    table = token_bucket_table(16, 64)
    q, k = torch.arange(3, 10), torch.arange(20)
    buckets = token_buckets(table, q, k)
    assert buckets.shape == (7, 20)
    shifted = token_buckets(table, q + 5, k + 5)
    assert torch.equal(buckets, shifted)
    assert torch.equal(buckets[2], table[q[2] - k + 63])


def test_image_buckets_translation_invariant_and_injective():
    bs = 5
    ids = encoder_image_position_ids(bs, bs, bs)  # every cell of the grid
    buckets = image_buckets(ids, ids, bs)  # (25, 25)
    rows, cols = (ids - 1) // bs, (ids - 1) % bs
    offset = {}
    for i, j in itertools.product(range(25), range(25)):
        key = (int(rows[i] - rows[j]), int(cols[i] - cols[j]))
        assert offset.setdefault(key, int(buckets[i, j])) == buckets[i, j]  # same offset, same bucket
    assert len(set(offset.values())) == len(offset) == (2 * bs - 1) ** 2  # distinct offsets, distinct buckets


def test_image_buckets_special_position_zero():
    bs = 4
    num_rel = (2 * bs - 1) ** 2 + 3
    ids = torch.tensor([0, 1, 6])
    b = image_buckets(ids, ids, bs)
    assert b[0, 0] == num_rel - 1 and b[0, 1] == b[0, 2] == num_rel - 3 and b[1, 0] == b[2, 0] == num_rel - 2
    assert b[1:, 1:].max() < num_rel - 3  # grid pairs never use the special buckets
    table = image_bucket_table(bs)
    assert table.shape == (bs * bs + 1, bs * bs + 1) and table.max() == num_rel - 1
    assert (table.diagonal()[1:] == (bs - 1) * (2 * bs - 1) + bs - 1).all()  # offset (0, 0)


def test_image_buckets_broadcast_over_a_batch():
    bs = 4
    ids = torch.stack([encoder_image_position_ids(2, 2, bs), encoder_image_position_ids(2, 2, bs).flip(0)])
    b = image_buckets(ids, ids, bs)
    assert b.shape == (2, 4, 4)
    assert torch.equal(b[1], b[0].flip(0).flip(1))  # permuting the positions permutes the buckets


def test_image_position_ids():
    assert encoder_image_position_ids(2, 3, 5).tolist() == [1, 2, 3, 6, 7, 8]  # r * bucket + c + 1
    idx = decoder_image_position_idx(code_image_size=32, bucket_size=5)  # 4x4 code grid
    assert idx.shape == (1 + 16 + 769,)
    assert idx[0] == 0 and torch.equal(idx[1:17], encoder_image_position_ids(4, 4, 5))
    assert (idx[17:] == 1024).all()


def test_rel_pos_tables_one_independent_table_per_layer():
    tables = rel_pos_tables(3, 31, 4)
    assert len(tables) == 3 and all(t.weight.shape == (31, 4) for t in tables)
    assert len({t.weight.data_ptr() for t in tables}) == 3
