"""CIFAR-10/100 and Fashion-MNIST from files in their distributed formats; the embedded digits."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from robustkernels import data
from robustkernels.data.digits import _load_split


def _cifar_batch(n, label_key, k, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, k, n).tolist()}


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": _cifar_batch(4, b"labels", 10, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(3, b"labels", 10, 9)
    for name, b in batches.items():
        (folder / name).write_bytes(pickle.dumps(b))
    train = data.cifar10(tmp_path, "train")
    assert train.images.shape == (20, 3, 32, 32) and train.num_classes == 10
    # Channel-major rows: the first 1024 bytes are the red plane.
    first = batches["data_batch_1"][b"data"][0]
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(first[:1024]).float() / 255)
    assert train.targets.tolist()[:4] == batches["data_batch_1"][b"labels"]
    assert len(data.cifar10(folder, "test")) == 3  # the folder itself also works as root


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        b = _cifar_batch(n, b"fine_labels", 100, n)
        b[b"coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(b))
        ds = data.cifar100(tmp_path, name)
        assert ds.num_classes == 100 and ds.targets.tolist() == b[b"fine_labels"]


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    header_img = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    header_lab = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header_img + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(header_lab + labels.tobytes())
    ds = data.fashion_mnist(tmp_path, "train")
    assert ds.images.shape == (5, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.targets.tolist() == labels.tolist()
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.fashion_mnist(tmp_path, "test")


def test_digits_split_is_disjoint_and_complete():
    train_img, train_y = _load_split("train")
    val_img, val_y = _load_split("val")
    assert len(train_y) + len(val_y) == 1797
    assert abs(len(val_y) - 0.25 * 1797) < 10 and set(val_y.tolist()) == set(range(10))
    train_rows = {row.tobytes() for row in train_img}
    # load_digits holds no duplicate images across the split, so membership identifies the split.
    assert not any(row.tobytes() in train_rows for row in val_img)


@pytest.mark.parametrize("split", ["train", "val"])
def test_composite_digits_spell_their_label(split):
    ds = data.composite_digits(3, 2500, split, seed=1)
    assert ds.num_classes == 1000 and ds.images.shape == (2500, 1, 8, 24)
    counts = torch.bincount(ds.targets, minlength=1000)
    assert counts.min() == 2 and counts.max() == 3  # balanced: 2500 = 2 * 1000 + 500
    images, digits = _load_split(split)
    lookup = {img.tobytes(): int(d) for img, d in zip(images, digits)}
    for i in range(0, 2500, 97):
        tiles = ds.images[i, 0].numpy()
        spelled = [lookup[np.ascontiguousarray(tiles[:, 8 * p : 8 * p + 8]).tobytes()] for p in range(3)]
        assert 100 * spelled[0] + 10 * spelled[1] + spelled[2] == int(ds.targets[i])
    again = data.composite_digits(3, 2500, split, seed=1)
    assert torch.equal(again.images, ds.images) and torch.equal(again.targets, ds.targets)
