"""Token-budget batches: samples of similar length batched so that ``B * max_len <= max_tokens``.

Bucketing (``data.max_tokens_per_batch``, ``data.bucket_ratio``): sample ``i`` of length ``l_i``
falls in the geometric bucket ``floor(log(l_i) / log(bucket_ratio))``, so the lengths in one bucket
differ by less than the ratio and a batch pads at most ``1 - 1 / bucket_ratio`` of its tokens
(a 16k-token video is never batched with a short text). Each bucket has a fixed batch size,
``max_tokens // (its longest sample)``, which keeps every batch within the budget. Every epoch
(seed ``seed``, epoch ``epoch``) shuffles each bucket's members, cuts them into batches of that
size (the last one of a bucket may be smaller) and shuffles all batches together.

Because bucket membership and batch sizes do not depend on the epoch, every epoch has the same
number of batches: Lightning's ``len(train_dataloader)`` and ``trainer.estimated_stepping_batches``
(the cosine schedule's length) hold for every epoch. Under DDP the epoch's batches are padded by
repeating its first ones to a multiple of the world size, and rank ``r`` takes batches ``r, r + W,
...``: equal batch counts per rank, so no rank waits for another at the end of an epoch.

:func:`padded_batches` (lengths + an order -> batches under the budget) is the batching step.

Packing (``data.packing=true``, :func:`packed_batches`): the samples are instead packed first-fit
into rows of at most ``max_tokens`` real tokens (one row per batch, no padding;
``swim.data.packing`` collates them). First-fit runs once, over the buckets longest first with each
bucket's members shuffled by ``seed`` (so it is near first-fit-decreasing), which fixes the rows
and their number for every epoch; each epoch then shuffles the rows' order as above. Resuming
and DDP work exactly as for padded batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from swim.data.dataset import SkippedRecord, SwimDataset
from swim.data.sample import Sample


def length_buckets(lengths: np.ndarray, ratio: float) -> np.ndarray:
    """``(N,)`` int64 bucket ids of ``(N,)`` positive lengths: ``floor(log(l) / log(ratio))``."""
    if ratio <= 1:
        raise ValueError(f"data.bucket_ratio={ratio}: expected > 1")
    if len(lengths) and int(lengths.min()) < 1:
        raise ValueError(f"sample lengths must be >= 1 token, got {int(lengths.min())}")
    return np.floor(np.log(lengths.astype(np.float64)) / math.log(ratio) + 1e-9).astype(np.int64)


def padded_batches(lengths: np.ndarray, order: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Cut ``order`` into consecutive batches of ``max_tokens // max(lengths[order])`` indices.

    Args:
        lengths: ``(N,)`` token lengths of all samples.
        order: ``(K,)`` indices into ``lengths`` (one bucket's members, in this epoch's order).
        max_tokens: the budget of one padded batch, ``B * max_len``.

    Returns:
        Batches of indices, each with ``len(batch) * max(lengths[batch]) <= max_tokens``; their
        number depends only on ``len(order)`` and the longest length, not on the order.

    Raises:
        ValueError: a sample longer than ``max_tokens`` alone.
    """
    if len(order) == 0:
        return []
    longest = int(lengths[order].max())
    if longest > max_tokens:
        raise ValueError(f"a sample of {longest} tokens exceeds data.max_tokens_per_batch={max_tokens}")
    size = max_tokens // longest
    return [order[i : i + size].tolist() for i in range(0, len(order), size)]


def packed_batches(lengths: np.ndarray, order: np.ndarray, max_tokens: int) -> list[list[int]]:
    """First-fit packing of ``order`` into rows of at most ``max_tokens`` summed tokens.

    Args:
        lengths: ``(N,)`` token lengths of all samples.
        order: ``(K,)`` indices into ``lengths`` in the order they are placed: each goes into the
            first row (in creation order) with room for it, else opens a new row.
        max_tokens: the tokens of one packed row.

    Returns:
        Rows of indices, each in placement order with ``sum(lengths[row]) <= max_tokens``.

    Raises:
        ValueError: a sample longer than ``max_tokens`` alone.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order.tolist():
        length = int(lengths[index])
        if length > max_tokens:
            raise ValueError(f"a sample of {length} tokens exceeds data.max_tokens_per_batch={max_tokens}")
        for r, free in enumerate(room):
            if length <= free:
                rows[r].append(index)
                room[r] -= length
                break
        else:
            rows.append([index])
            room.append(max_tokens - length)
    return rows


def epoch_order(buckets: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Each bucket's members among ``indices`` (``(K,)``), shuffled by ``rng``, buckets ascending."""
    shuffled = indices[rng.permutation(len(indices))]
    keys = buckets[shuffled]
    by_bucket = shuffled[np.argsort(keys, kind="stable")]
    _, starts = np.unique(np.sort(keys), return_index=True)
    return np.split(by_bucket, starts[1:])


class TokenBudgetSampler(DistributedSampler):
    """Yields this rank's token-budget batches (lists of dataset indices) of the current epoch.

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP instead of injecting its
    own; it is the DataLoader's ``sampler`` with ``batch_size=None`` over a :class:`BatchView`.
    ``start`` skips the first batches of the next iteration only (a resumed epoch); ``len`` is this
    rank's batch count, the same every epoch.

    Args:
        dataset: the dataset (for its length).
        lengths: ``(len(dataset),)`` token lengths.
        max_tokens: the padded-batch budget, ``len(batch) * max_len <= max_tokens``.
        seed: seed of the per-epoch shuffles (with the epoch from ``set_epoch``).
        bucket_ratio: the geometric bucket width (> 1).
        indices: the dataset positions to draw from (default all); none may exceed ``max_tokens``.
        num_replicas, rank: the DDP world size and this process's rank.
        packing: pack samples first-fit into rows of ``max_tokens`` summed tokens
            (:func:`packed_batches`) instead of padded batches.
    """

    def __init__(
        self,
        dataset: Sized,
        lengths: np.ndarray,
        *,
        max_tokens: int,
        seed: int,
        bucket_ratio: float = 1.25,
        indices: Sequence[int] | np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        packing: bool = False,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for a dataset of {len(dataset)} samples")
        if max_tokens < 1:
            raise ValueError(f"data.max_tokens_per_batch={max_tokens}: expected >= 1 or null")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ValueError("the token-budget sampler has no sample to draw from")
        over = self.indices[self.lengths[self.indices] > max_tokens]
        if len(over):
            raise ValueError(
                f"samples {over[:5].tolist()} exceed data.max_tokens_per_batch={max_tokens} "
                f"(lengths {self.lengths[over[:5]].tolist()})"
            )
        self.max_tokens = max_tokens
        self.buckets = length_buckets(self.lengths, bucket_ratio)
        self.start = 0
        self.packed_rows: list[list[int]] | None = None
        if packing:
            groups = epoch_order(self.buckets, self.indices, np.random.default_rng([seed]))
            longest_first = np.concatenate(groups[::-1])
            self.packed_rows = packed_batches(self.lengths, longest_first, max_tokens)
            total = len(self.packed_rows)
        else:
            groups = epoch_order(self.buckets, self.indices, np.random.default_rng(0))
            total = sum(len(padded_batches(self.lengths, g, max_tokens)) for g in groups)
        self.num_batches = math.ceil(total / num_replicas)

    def __len__(self) -> int:
        return self.num_batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of ``epoch`` in order, padded to ``num_replicas * len(self)``."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.packed_rows is not None:
            batches = [list(row) for row in self.packed_rows]
        else:
            batches = [
                batch
                for group in epoch_order(self.buckets, self.indices, rng)
                for batch in padded_batches(self.lengths, group, self.max_tokens)
            ]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        missing = self.num_batches * self.num_replicas - len(batches)
        return batches + [batches[i % len(batches)] for i in range(missing)]

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        mine = self.epoch_batches(self.epoch)[self.rank :: self.num_replicas]
        start, self.start = self.start, 0
        return iter(mine[start:])


class BatchView(Dataset[list[Sample | SkippedRecord]]):
    """``view[indices]`` is ``[dataset[i] for i in indices]``: a loader item is a whole batch."""

    def __init__(self, dataset: SwimDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> list[Sample | SkippedRecord]:  # type: ignore[override]
        return [self.dataset[i] for i in indices]
