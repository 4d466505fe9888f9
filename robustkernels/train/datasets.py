"""Build the training set and the clean validation sets a config names."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from .. import data
from .config import TrainConfig
from .errors import ConfigError
from .validation import DATASETS, DEFAULT_NOISE_MAPPING, setting_name

__all__ = ["DataBundle", "build_data"]


@dataclass
class DataBundle:
    """Training set, named clean validation sets, ``K``, the input shape, and the noise mapping."""

    train: Dataset
    vals: dict[str, Dataset]
    num_classes: int
    input_shape: tuple[int, ...]
    asym_mapping: str | None = None


def _need(value: str | None, what: str, dataset: str) -> str:
    # Validation already requires these; this keeps a hand-built config from failing obscurely.
    if not value:
        raise ConfigError(f"--dataset {dataset} needs {what}")
    return value


def build_data(cfg: TrainConfig) -> DataBundle:
    name = cfg.dataset
    if name == "composite_digits":
        train = data.composite_digits(cfg.num_digits, cfg.train_size, "train", seed=cfg.seed)
        val = data.composite_digits(cfg.num_digits, cfg.val_size, "val", seed=cfg.seed)
        return DataBundle(train, {"val": val}, train.num_classes, tuple(train.images.shape[1:]))
    if name == "digits":
        train, val = data.digits_dataset("train"), data.digits_dataset("val")
        return DataBundle(train, {"val": val}, 10, tuple(train.images.shape[1:]), DEFAULT_NOISE_MAPPING[name])
    if name in ("cifar10", "cifar100", "fashion_mnist"):
        root = _need(cfg.data_root, setting_name("data_root"), name)
        loader = getattr(data, name)
        train, val = loader(root, "train"), loader(root, "test")
        return DataBundle(train, {"test": val}, train.num_classes, tuple(train.images.shape[1:]), name)
    shape = (3, cfg.image_size, cfg.image_size)
    train_tf = data.transforms.webvision_train_transform(cfg.image_size)
    val_tf = data.transforms.webvision_val_transform(cfg.image_size)
    if name in ("webvision", "mini_webvision"):
        root = _need(cfg.data_root, setting_name("data_root") + " (the WebVision root holding info/)", name)
        if name == "webvision":
            train = data.webvision(root, "train", transform=train_tf)
            vals = {"webvision_val": data.webvision(root, "val", transform=val_tf)}
        else:
            train = data.mini_webvision(root, "train", transform=train_tf)
            vals = {"webvision_val": data.mini_webvision(root, "val", transform=val_tf)}
        if cfg.imagenet_val_root:
            vals["imagenet_val"] = data.imagenet_val(
                cfg.imagenet_val_root, f"{root}/info/synsets.txt", num_classes=train.num_classes, transform=val_tf
            )
        return DataBundle(train, vals, train.num_classes, shape)
    if name == "imagefolder":
        train = data.image_folder(_need(cfg.data_root, setting_name("data_root"), name), transform=train_tf)
        val = data.image_folder(_need(cfg.val_root, setting_name("val_root"), name), transform=val_tf)
        return DataBundle(train, {"val": val}, train.num_classes, shape)
    if name == "filelist":
        root = _need(cfg.data_root, setting_name("data_root"), name)
        train = data.file_list(root, _need(cfg.train_list, setting_name("train_list"), name), transform=train_tf)
        val = data.file_list(
            cfg.val_root or root,
            _need(cfg.val_list, setting_name("val_list"), name),
            num_classes=train.num_classes,
            transform=val_tf,
        )
        return DataBundle(train, {"val": val}, train.num_classes, shape)
    raise ConfigError(f"{setting_name('dataset')} must be one of {', '.join(DATASETS)}, got {name!r}")
