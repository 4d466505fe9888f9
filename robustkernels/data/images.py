"""Image-file datasets that skip corrupt or missing files instead of stopping the run.

A web-scraped set such as WebVision always holds a few truncated or unreadable files. A
sample that cannot be read is replaced by the next readable one of the list (so batch shapes
stay fixed, which DDP, ``torch.compile`` and BatchNorm rely on) and counted: every sample
carries the number of unreadable files skipped to produce it, and :func:`collate_images` sums
them per batch so the training loop can log the total. Each bad path is also warned about once
per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["ImageListDataset", "collate_images", "SampleKey", "read_file_list", "sample_seed"]

log = logging.getLogger(__name__)

#: Key of one training sample: ``(seed, epoch, index)``. A plain ``int`` index is also accepted
#: (validation, no random augmentation).
SampleKey = tuple[int, int, int]

# Unreadable files tried in a row before giving up: a whole run of bad files means a broken
# dataset, which must stop with a clear error rather than loop.
_MAX_CONSECUTIVE_BAD = 64


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the random augmentation of one sample: a fixed function of (seed, epoch, index).

    Deriving it from the sample, not from a per-worker RNG stream, makes augmentation
    independent of the number of workers and of where a resumed run restarts in the epoch.
    """
    return (seed * 1_000_003 + epoch) * 2_147_483_647 + index & 0x7FFF_FFFF_FFFF_FFFF


def read_file_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Read a ``relative/path label`` file list (WebVision, mini-WebVision, Clothing1M style).

    Blank lines are skipped; the path may contain spaces (the label is the last field).
    """
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            rel, sep, label = line.rpartition(" ")
            if not sep or not label.lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
            entries.append((rel, int(label)))
    return entries


def _load_rgb(path: str):
    from PIL import Image  # local: pillow is only needed for image-file datasets

    with Image.open(path) as img:
        return img.convert("RGB")  # convert() forces the full decode, so truncation shows up here


class ImageListDataset(torch.utils.data.Dataset):
    """Images listed as ``(path relative to root, label)`` pairs.

    Args:
        root: directory the paths are relative to.
        samples: ``(relative path, label)`` pairs.
        num_classes: number of classes (labels must lie in ``[0, num_classes)``).
        transform: callable ``PIL.Image -> Tensor``; random transforms use the global torch RNG,
            which is seeded per sample from the key (see :func:`sample_seed`).
        classes: optional class names, ``classes[label]``.

    Indexing with an ``int`` or a ``(seed, epoch, index)`` key returns
    ``(image, label, skipped)``: ``skipped`` counts the unreadable files passed over.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        samples: Sequence[tuple[str, int]],
        num_classes: int,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.samples = list(samples)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        bad = [(p, y) for p, y in self.samples if not 0 <= y < self.num_classes]
        if bad:
            raise ValueError(f"{len(bad)} labels outside [0, {self.num_classes}), e.g. {bad[0]}")
        self.targets = torch.tensor([y for _, y in self.samples], dtype=torch.int64)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def with_targets(self, targets: Tensor) -> ImageListDataset:
        """The same images with other labels (e.g. noisy ones)."""
        if len(targets) != len(self.samples):
            raise ValueError(f"targets has {len(targets)} labels for {len(self.samples)} images")
        samples = [(p, int(y)) for (p, _), y in zip(self.samples, targets.tolist())]
        return ImageListDataset(self.root, samples, self.num_classes, self.transform, self.classes)

    def _read(self, index: int):
        path = os.path.join(self.root, self.samples[index][0])
        try:
            return _load_rgb(path)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for missing/corrupt files
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping unreadable image %s (%s)", path, err)
            return None

    def __getitem__(self, key: int | SampleKey) -> tuple[Tensor, int, int]:
        if isinstance(key, tuple):
            seed, epoch, index = key
        else:
            seed, epoch, index = 0, 0, int(key)
        n = len(self.samples)
        for skipped in range(min(n, _MAX_CONSECUTIVE_BAD)):
            i = (index + skipped) % n
            img = self._read(i)
            if img is None:
                continue
            if self.transform is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(seed, epoch, index))
                    img = self.transform(img)
            return img, int(self.samples[i][1]), skipped
        raise RuntimeError(
            f"{min(n, _MAX_CONSECUTIVE_BAD)} unreadable images in a row from {self.samples[index][0]!r} "
            f"under {self.root!r}: the dataset root or file list is wrong"
        )


def collate_images(batch: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, int]:
    """Stack a batch of ``(image, label, skipped)`` into ``(images, labels, total skipped)``."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    return images, labels, sum(b[2] for b in batch)
