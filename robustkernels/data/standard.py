"""CIFAR-10/100 and Fashion-MNIST read from the files their authors distribute.

- CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch}`` (python pickles).
- CIFAR-100: ``cifar-100-python/{train, test}``; ``fine_labels`` (100 classes).
- Fashion-MNIST: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally ``.gz``).

``root`` may be the folder holding those files or its parent. Images come back as float32 in
``[0, 1]``, ``[N, C, H, W]``, in a :class:`~robustkernels.data.tensor.TensorDataset`.
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import torch

from .tensor import TensorDataset

__all__ = ["cifar10", "cifar100", "fashion_mnist"]


def _find(root: str | os.PathLike, folder: str, name: str) -> str:
    for candidate in (os.path.join(root, folder, name), os.path.join(root, name)):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{name} not found under {root} or {os.path.join(root, folder)}")


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(batches: list[dict], label_key: bytes, num_classes: int) -> TensorDataset:
    data = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    images = torch.from_numpy(data).float().div_(255.0)
    return TensorDataset(images, torch.from_numpy(labels), num_classes)


def _split(train: bool | str) -> bool:
    if isinstance(train, str):
        if train not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {train!r}")
        return train == "train"
    return bool(train)


def cifar10(root: str | os.PathLike, split: str = "train") -> TensorDataset:
    """CIFAR-10 (``split="train"``: 50,000 images; ``"test"``/``"val"``: 10,000)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if _split(split) else ["test_batch"]
    return _cifar([_unpickle(_find(root, "cifar-10-batches-py", n)) for n in names], b"labels", 10)


def cifar100(root: str | os.PathLike, split: str = "train") -> TensorDataset:
    """CIFAR-100 with the 100 fine labels."""
    name = "train" if _split(split) else "test"
    return _cifar([_unpickle(_find(root, "cifar-100-python", name))], b"fine_labels", 100)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: str | os.PathLike, stem: str) -> str:
    for folder in ("", "FashionMNIST/raw", "fashion-mnist", "raw"):
        for ext in ("", ".gz"):
            path = os.path.join(root, folder, stem + ext)
            if os.path.exists(path):
                return path
    raise FileNotFoundError(f"{stem}[.gz] not found under {root}")


def fashion_mnist(root: str | os.PathLike, split: str = "train") -> TensorDataset:
    """Fashion-MNIST (60,000 training / 10,000 test images, ``[N, 1, 28, 28]``)."""
    prefix = "train" if _split(split) else "t10k"
    images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    tensor = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return TensorDataset(tensor, torch.from_numpy(labels.astype(np.int64)), 10)
