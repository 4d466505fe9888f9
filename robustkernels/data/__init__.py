"""Datasets for the training script: embedded digits, standard files, image trees and lists.

Image-file datasets (:mod:`.images`, :mod:`.webvision`, :mod:`.folders`) skip and count
unreadable files; in-memory ones (:mod:`.digits`, :mod:`.standard`) are
:class:`~robustkernels.data.tensor.TensorDataset` and are indexed a batch at a time.
"""

from . import transforms
from .digits import composite_digits, digits_dataset
from .folders import file_list, image_folder
from .images import ImageListDataset, collate_images, read_file_list
from .standard import cifar10, cifar100, fashion_mnist
from .tensor import TensorDataset
from .webvision import imagenet_val, mini_webvision, read_synsets, webvision

__all__ = [
    "ImageListDataset",
    "TensorDataset",
    "cifar10",
    "cifar100",
    "collate_images",
    "composite_digits",
    "digits_dataset",
    "fashion_mnist",
    "file_list",
    "image_folder",
    "imagenet_val",
    "mini_webvision",
    "read_file_list",
    "read_synsets",
    "transforms",
    "webvision",
]
