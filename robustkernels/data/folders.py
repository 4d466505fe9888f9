"""Generic image datasets: a folder per class, or a ``path label`` file list."""

from __future__ import annotations

import os
from collections.abc import Callable

from .images import ImageListDataset, read_file_list

__all__ = ["image_folder", "file_list"]

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_folder(root: str | os.PathLike, *, transform: Callable | None = None) -> ImageListDataset:
    """``root/<class name>/<image>``; classes in sorted name order (as torchvision's ImageFolder)."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise FileNotFoundError(f"no class folders under {root}")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(files):
                if f.lower().endswith(_IMAGE_EXTENSIONS):
                    samples.append((os.path.relpath(os.path.join(dirpath, f), root), label))
    return ImageListDataset(root, samples, len(classes), transform, classes)


def file_list(
    root: str | os.PathLike,
    list_file: str | os.PathLike,
    *,
    num_classes: int | None = None,
    transform: Callable | None = None,
) -> ImageListDataset:
    """Images listed in ``list_file`` as ``relative/path label`` lines, relative to ``root``.

    ``num_classes`` defaults to ``1 + max(label)``.
    """
    samples = read_file_list(list_file)
    if not samples:
        raise ValueError(f"{list_file} lists no images")
    k = num_classes if num_classes is not None else 1 + max(y for _, y in samples)
    return ImageListDataset(root, samples, k, transform)
