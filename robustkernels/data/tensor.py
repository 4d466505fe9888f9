"""In-memory dataset of image tensors, indexed a whole batch at a time."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TensorDataset"]


class TensorDataset(torch.utils.data.Dataset):
    """Images ``[N, C, H, W]`` and integer labels ``[N]`` held in memory.

    The training loop indexes it with a whole batch of indices (``dataset.batch(idx)``) instead
    of going through a ``DataLoader``: for 8x8 digits, per-sample ``__getitem__`` and collation
    would cost more than the model.
    """

    def __init__(self, images: Tensor, targets: Tensor, num_classes: int) -> None:
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"images has {images.shape[0]} rows but targets has {targets.shape[0]}")
        self.images = images
        self.targets = targets
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels of ``indices`` (a 1-D int64 tensor) in one gather."""
        return self.images.index_select(0, indices), self.targets.index_select(0, indices)

    def with_targets(self, targets: Tensor) -> TensorDataset:
        """The same images with other labels (e.g. noisy ones)."""
        return TensorDataset(self.images, targets, self.num_classes)
