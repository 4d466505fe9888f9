"""WebVision 1.0, mini-WebVision and ILSVRC2012 validation, from their own directory layouts.

WebVision 1.0 (the resized-256 release, as distributed)::

    root/info/synsets.txt                  # 1000 lines "n01440764 tench, Tinca tinca"; line i = class i
    root/info/train_filelist_google.txt    # "google/q0001/000000.jpg 0"
    root/info/train_filelist_flickr.txt    # "flickr/q0001/000000.jpg 0"
    root/info/val_filelist.txt             # "val000001.jpg 0", images under root/val_images_256/
    root/google/..., root/flickr/..., root/val_images_256/...

mini-WebVision is the first 50 classes of the Google subset (DivideMix, APL, ALFs, ...): 65,944
training and 2,500 validation images. The ILSVRC2012 validation images of the same classes
are read from the usual one-folder-per-synset layout (``val/n01440764/*.JPEG``) and labelled
through ``synsets.txt``, never through a sorted folder order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .images import ImageListDataset, read_file_list

__all__ = ["read_synsets", "webvision", "mini_webvision", "imagenet_val", "MINI_WEBVISION_CLASSES"]

MINI_WEBVISION_CLASSES = 50
_VAL_IMAGE_DIRS = ("val_images_256", "val_images_resized", "val_images")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_synsets(path: str | os.PathLike) -> list[str]:
    """WordNet ids of ``synsets.txt`` in class order (first field of each non-blank line)."""
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _first_classes(samples: list[tuple[str, int]], num_classes: int | None) -> list[tuple[str, int]]:
    return samples if num_classes is None else [(p, y) for p, y in samples if y < num_classes]


def webvision(
    root: str | os.PathLike,
    split: str = "train",
    *,
    sources: Sequence[str] = ("google", "flickr"),
    num_classes: int | None = None,
    transform: Callable | None = None,
    val_dir: str | None = None,
) -> ImageListDataset:
    """WebVision 1.0 train or validation set.

    Args:
        root: the WebVision root (holding ``info/``).
        split: ``"train"`` or ``"val"``.
        sources: training sources, ``"google"`` and/or ``"flickr"``.
        num_classes: keep only classes ``0 .. num_classes - 1`` (50 for mini-WebVision);
            ``None`` keeps all (1000).
        transform: ``PIL.Image -> Tensor``.
        val_dir: folder of the validation images under ``root``; default the first of
            ``val_images_256``, ``val_images_resized``, ``val_images`` that exists.
    """
    info = os.path.join(root, "info")
    synsets = read_synsets(os.path.join(info, "synsets.txt"))
    total = len(synsets)
    if num_classes is not None and not 1 <= num_classes <= total:
        raise ValueError(f"num_classes must be in [1, {total}], got {num_classes!r}")
    if split == "train":
        samples: list[tuple[str, int]] = []
        for source in sources:
            if source not in ("google", "flickr"):
                raise ValueError(f"sources must be 'google' and/or 'flickr', got {source!r}")
            samples += read_file_list(os.path.join(info, f"train_filelist_{source}.txt"))
        image_root = os.fspath(root)
    elif split == "val":
        samples = read_file_list(os.path.join(info, "val_filelist.txt"))
        if val_dir is None:
            val_dir = next((d for d in _VAL_IMAGE_DIRS if os.path.isdir(os.path.join(root, d))), None)
            if val_dir is None:
                raise FileNotFoundError(f"no validation image folder ({', '.join(_VAL_IMAGE_DIRS)}) under {root}")
        image_root = os.path.join(root, val_dir)
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    k = total if num_classes is None else num_classes
    return ImageListDataset(image_root, _first_classes(samples, num_classes), k, transform, synsets[:k])


def mini_webvision(
    root: str | os.PathLike, split: str = "train", *, transform: Callable | None = None
) -> ImageListDataset:
    """mini-WebVision: the first 50 classes of the Google subset (validation: the same 50 classes)."""
    return webvision(root, split, sources=("google",), num_classes=MINI_WEBVISION_CLASSES, transform=transform)


def imagenet_val(
    root: str | os.PathLike,
    synsets_file: str | os.PathLike,
    *,
    num_classes: int | None = None,
    transform: Callable | None = None,
) -> ImageListDataset:
    """ILSVRC2012 validation images (``root/<wnid>/<image>``) labelled by WebVision's ``synsets.txt``.

    Folders whose wnid is not among the first ``num_classes`` synsets are left out, so with
    ``num_classes=50`` this is the 2,500-image ImageNet check set of mini-WebVision.
    """
    synsets = read_synsets(synsets_file)
    k = len(synsets) if num_classes is None else num_classes
    index = {wnid: i for i, wnid in enumerate(synsets[:k])}
    samples = []
    for wnid in sorted(os.listdir(root)):
        folder = os.path.join(root, wnid)
        if wnid not in index or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(_IMAGE_EXTENSIONS):
                samples.append((os.path.join(wnid, name), index[wnid]))
    if not samples:
        raise FileNotFoundError(f"no images of the first {k} synsets of {synsets_file} under {root}")
    return ImageListDataset(root, samples, k, transform, synsets[:k])
