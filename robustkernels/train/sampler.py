"""A ``DistributedSampler`` that can start mid-epoch, for exact resumption."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``, ``drop_last=True``) yielding sample keys.

    Yields ``(seed, epoch, index)`` keys: image datasets derive each sample's augmentation
    seed from them (:func:`robustkernels.data.images.sample_seed`). :meth:`set_start` skips the
    first samples of this rank's share of the epoch, so a run resumed after ``b`` batches sees
    exactly the samples the uninterrupted run would have seen next.

    With ``W`` ranks, rank ``r`` takes every ``W``-th index of the same permutation, so the
    per-rank batches of one step together are exactly the single-process batch of that step.
    """

    def __init__(self, length: int, num_replicas: int, rank: int, seed: int) -> None:
        # DistributedSampler only needs len(dataset); a range stands in for the dataset.
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._start = 0

    def set_start(self, samples: int) -> None:
        """Skip the first ``samples`` of this rank's share in the next iteration (one epoch only)."""
        self._start = samples

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())[self._start :]
        self._start = 0
        epoch, seed = self.epoch, self.seed
        return iter([(seed, epoch, i) for i in indices])

    def index_tensor(self) -> torch.Tensor:
        """This epoch's remaining indices as an int64 tensor (for in-memory datasets)."""
        return torch.tensor([k[2] for k in self], dtype=torch.int64)
