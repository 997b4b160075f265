"""Batches: length bucketing keeps the data and the randomness, and removes the padding."""

from __future__ import annotations

import torch

from bench.data.batching import BucketBatchSampler, loader


def ragged(n: int = 1000, max_len: int = 64, seed: int = 0) -> torch.Tensor:
    """Padded ids with lengths 1..max_len, like short review snippets."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    ids = torch.randint(2, 100, (n, max_len), generator=g)
    ids[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    return ids


def test_every_example_once_per_epoch_in_a_new_order():
    ids = ragged()
    sampler = BucketBatchSampler((ids != 0).sum(1), 50, seed=3)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 20
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert sorted(i for b in second for i in b) == list(range(1000))
    assert first != second  # reshuffled every epoch
    assert [len(b) for b in first].count(50) == 20


def test_same_seed_same_batches():
    lengths = (ragged() != 0).sum(1)
    assert list(BucketBatchSampler(lengths, 50, 1)) == list(BucketBatchSampler(lengths, 50, 1))
    assert list(BucketBatchSampler(lengths, 50, 1)) != list(BucketBatchSampler(lengths, 50, 2))


def test_bucketed_batches_carry_far_less_padding_than_random_ones():
    ids, labels = ragged(), torch.zeros(1000, dtype=torch.long)
    real_tokens = int((ids != 0).sum())

    def padded_cells(batches) -> int:
        return sum(b[0].numel() for b in batches)

    bucketed = padded_cells(loader(ids, labels, 50, shuffle=True, seed=0))
    random_batches = [(ids[idx][:, :int((ids[idx] != 0).sum(1).max())], None)
                      for idx in torch.randperm(1000, generator=torch.Generator().manual_seed(0))
                      .split(50)]
    assert bucketed < 1.15 * real_tokens           # almost no padding
    assert padded_cells(random_batches) > 1.6 * real_tokens  # random batches: mostly padding


def test_evaluation_batches_cover_every_example_once_sorted_by_length():
    ids = ragged(n=230)
    labels = torch.arange(230)
    seen = []
    widths = []
    for batch_ids, batch_labels in loader(ids, labels, 100, shuffle=False):
        seen += batch_labels.tolist()
        widths.append(batch_ids.shape[1])
        assert torch.equal(batch_ids, ids[batch_labels][:, :batch_ids.shape[1]])
        assert (ids[batch_labels][:, batch_ids.shape[1]:] == 0).all()  # nothing cut but padding
    assert sorted(seen) == list(range(230))
    assert widths == sorted(widths)
