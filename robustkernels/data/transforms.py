"""Standard image transforms (ImageNet / WebVision recipe) and batched tensor augmentation."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "webvision_train_transform", "webvision_val_transform", "crop_flip"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def webvision_train_transform(size: int = 224):
    """RandomResizedCrop, flip, ColorJitter(.4, .4, .4, .2), normalise (APL / ALFs / JAL recipe)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.2),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def webvision_val_transform(size: int = 224, resize: int | None = None):
    """Resize 256 + CenterCrop 224, normalise (``resize`` defaults to ``size * 256 / 224``)."""
    from torchvision import transforms as T

    resize = resize if resize is not None else round(size * 256 / 224)
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding plus horizontal flip, per image, for a whole batch.

    The CIFAR recipe, done on the batch tensor (any device) so in-memory datasets need no
    per-sample Python. ``generator`` (CPU) decides the offsets, so a seeded generator makes the
    augmentation reproducible across a resume.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.unsqueeze(1) + torch.arange(h)).to(images.device)  # [n, h]
    cols = (dx.unsqueeze(1) + torch.arange(w)).to(images.device)  # [n, w]
    cols = torch.where(flip.to(images.device).unsqueeze(1), cols.flip(1), cols)
    idx_n = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()
