"""A tiny synthetic WebVision tree (PNG files, lists, synsets) read end to end, corrupt file included."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from robustkernels import data
from robustkernels.data.images import ImageListDataset, collate_images

NUM_SYNSETS = 60  # more than mini-WebVision's 50, so the class filter matters
CLASSES = (0, 1, 49, 50, 59)


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """WebVision layout with 2 google + 1 flickr image per class, 1 val image per class,
    one corrupt google file (class 1), one listed-but-missing flickr file (class 0), and an
    ImageNet val folder per synset."""
    root = tmp_path_factory.mktemp("webvision")
    wnids = [f"n{idx:08d}" for idx in range(NUM_SYNSETS)]
    (root / "info").mkdir()
    (root / "info" / "synsets.txt").write_text("".join(f"{w} class number {i}\n" for i, w in enumerate(wnids)))
    google, flickr, val = [], [], []
    for c in CLASSES:
        for j in range(2):
            rel = f"google/q{c:04d}/{j:06d}.jpg"
            _png(str(root / rel), 10 * c % 250)
            google.append(f"{rel} {c}")
        rel = f"flickr/q{c:04d}/000000.jpg"
        if c != 0:
            _png(str(root / rel), 7)
        flickr.append(f"{rel} {c}")  # class 0's flickr file is missing
        _png(str(root / "val_images_256" / f"val{c:06d}.jpg"), c)
        val.append(f"val{c:06d}.jpg {c}")
        _png(str(root / "imagenet_val" / wnids[c] / f"ILSVRC2012_val_{c:08d}.JPEG"), c)
    (root / "google" / "q0001" / "000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")  # corrupt
    (root / "info" / "train_filelist_google.txt").write_text("\n".join(google) + "\n")
    (root / "info" / "train_filelist_flickr.txt").write_text("\n".join(flickr) + "\n")
    (root / "info" / "val_filelist.txt").write_text("\n".join(val) + "\n")
    return root


def _read_all(ds):
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_images, num_workers=0)
    images, labels, skipped = [], [], 0
    for x, y, s in loader:
        images.append(x)
        labels.append(y)
        skipped += s
    return torch.cat(images), torch.cat(labels), skipped


def test_webvision_train_reads_everything_and_counts_bad_files(tree):
    tf = data.transforms.webvision_val_transform(8)
    ds = data.webvision(tree, "train", transform=tf)
    assert ds.num_classes == NUM_SYNSETS and len(ds) == 3 * len(CLASSES)
    images, labels, skipped = _read_all(ds)
    assert images.shape == (15, 3, 8, 8) and torch.isfinite(images).all()
    assert skipped == 2  # the corrupt google file and the missing flickr file
    # A bad sample is replaced by the next readable one of the list, with that one's label.
    bad = {"google/q0001/000001.jpg", "flickr/q0000/000000.jpg"}
    expected = []
    for i in range(len(ds)):
        j = i
        while ds.samples[j][0] in bad:
            j = (j + 1) % len(ds)
        expected.append(ds.samples[j][1])
    assert labels.tolist() == expected


def test_mini_webvision_is_first_50_google_classes(tree):
    train = data.mini_webvision(tree, "train")
    assert train.num_classes == 50
    assert all(p.startswith("google/") and y < 50 for p, y in train.samples)
    assert sorted({y for _, y in train.samples}) == [0, 1, 49]
    val = data.mini_webvision(tree, "val", transform=data.transforms.webvision_val_transform(8))
    images, labels, skipped = _read_all(val)
    assert labels.tolist() == [0, 1, 49] and skipped == 0


def test_imagenet_val_labelled_through_synsets(tree):
    ds = data.imagenet_val(tree / "imagenet_val", tree / "info" / "synsets.txt", num_classes=50)
    assert [y for _, y in ds.samples] == [0, 1, 49]
    img, label, skipped = ds[2]
    assert label == 49 and skipped == 0 and img.size == (12, 12)
    full = data.imagenet_val(tree / "imagenet_val", tree / "info" / "synsets.txt")
    assert [y for _, y in full.samples] == list(CLASSES)


def test_generic_folder_and_file_list(tree, tmp_path):
    folder = data.image_folder(tree / "imagenet_val")
    assert folder.classes == sorted(os.listdir(tree / "imagenet_val")) and len(folder) == len(CLASSES)
    listed = data.file_list(tree, tree / "info" / "train_filelist_google.txt")
    assert listed.num_classes == 60 and len(listed) == 10
    bad = tmp_path / "bad.txt"
    bad.write_text("no_label_here\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        data.read_file_list(bad)


def test_all_unreadable_stops_with_clear_error(tmp_path):
    ds = ImageListDataset(tmp_path, [("missing.png", 0)], 1)
    with pytest.raises(RuntimeError, match="unreadable images in a row"):
        ds[0]


def test_augmentation_depends_only_on_the_sample_key(tree):
    ds = data.webvision(tree, "train", transform=data.transforms.webvision_train_transform(8))
    a, b, c = ds[(0, 3, 5)][0], ds[(0, 3, 5)][0], ds[(0, 4, 5)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.get_rng_state()
    ds[(0, 1, 2)]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left untouched


def test_training_run_on_the_tree_logs_skipped_images(tree, tmp_path):
    from robustkernels.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="webvision",
        data_root=str(tree),
        imagenet_val_root=str(tree / "imagenet_val"),
        image_size=8,
        model="mlp",
        hidden=16,
        loss="mae",
        epsilon="auto",
        batch_size=5,
        epochs=1,
        num_workers=0,
        threads=1,
        progress=False,
        plot=False,
        output_dir=str(tmp_path / "run"),
    )
    res = train(cfg)
    rec = res["final"]
    assert res["num_classes"] == NUM_SYNSETS and res["steps"] == 3
    assert rec["skipped_images"] == 2
    assert {"webvision_val_top1", "webvision_val_top5", "imagenet_val_top1", "imagenet_val_top5"} <= set(rec)
