"""Embedded data that needs no download: scikit-learn's bundled handwritten digits.

``load_digits`` ships 1797 grey 8x8 images of the digits 0-9 (from the UCI "optical
recognition of handwritten digits" set, 43 writers). :func:`digits_dataset` splits them into
train / validation images once, with a fixed seed, so that validation always uses handwriting
the model never saw. :func:`composite_digits` places ``n`` of those images side by side
(an ``8 x 8n`` image) and labels it with the number they spell, which gives ``10**n`` classes
built from real handwriting: 100 classes for two digits, 1000 for three. That is the
class-count effect of the paper on a problem small enough for a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from .tensor import TensorDataset

__all__ = ["digits_dataset", "composite_digits", "DIGITS_VAL_FRACTION"]

#: Share of the 1797 source images held out for validation (split per digit, seeded).
DIGITS_VAL_FRACTION = 0.25
_SPLIT_SEED = 20240601


def _load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Source images ``[M, 8, 8]`` (float32 in [0, 1]) and digits ``[M]`` of one split."""
    from sklearn.datasets import load_digits  # local: scikit-learn is only needed for this data

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    digits = bunch.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    is_val = np.zeros(len(digits), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(digits == d)
        n_val = int(round(DIGITS_VAL_FRACTION * len(idx)))
        is_val[rng.choice(idx, n_val, replace=False)] = True
    keep = is_val if split == "val" else ~is_val
    return images[keep], digits[keep]


def digits_dataset(split: str = "train") -> TensorDataset:
    """The 10-class digits of one split as ``[M, 1, 8, 8]`` images."""
    images, digits = _load_split(split)
    return TensorDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits), num_classes=10)


def composite_digits(
    num_digits: int,
    size: int,
    split: str = "train",
    *,
    seed: int = 0,
    balanced: bool = True,
) -> TensorDataset:
    """``size`` images of ``num_digits`` handwritten digits side by side, ``10**num_digits`` classes.

    Args:
        num_digits: digits per image (1 to 4); the class is the number they spell, first digit
            most significant, so ``K = 10**num_digits``.
        size: number of composite images.
        split: ``"train"`` or ``"val"``: which source images are used (disjoint sets).
        seed: seed of the draw; the same arguments always give the same dataset.
        balanced: draw the classes as ``0, 1, ..., K-1`` repeated (then shuffled) so every class
            has ``size // K`` or one more images; otherwise uniformly at random.

    Returns:
        A :class:`TensorDataset` of ``[size, 1, 8, 8 * num_digits]`` float32 images.
    """
    if not 1 <= num_digits <= 4:
        raise ValueError(f"num_digits must be 1..4, got {num_digits!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    images, digits = _load_split(split)
    num_classes = 10**num_digits
    rng = np.random.default_rng([seed, num_digits, 0 if split == "train" else 1])
    if balanced:
        labels = np.resize(np.arange(num_classes), size)
        rng.shuffle(labels)
    else:
        labels = rng.integers(0, num_classes, size)
    by_digit = [np.flatnonzero(digits == d) for d in range(10)]
    tiles = []
    for pos in range(num_digits):
        place = 10 ** (num_digits - 1 - pos)
        digit_at_pos = (labels // place) % 10
        pick = np.empty(size, dtype=np.int64)
        for d in range(10):
            rows = np.flatnonzero(digit_at_pos == d)
            pick[rows] = rng.choice(by_digit[d], len(rows), replace=True)
        tiles.append(images[pick])
    composite = np.concatenate(tiles, axis=2)  # [size, 8, 8 * num_digits]
    return TensorDataset(
        torch.from_numpy(composite).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), num_classes=num_classes
    )
