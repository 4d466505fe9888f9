"""Synthetic label noise: symmetric, asymmetric (published class mappings) and pair flip.

Every generator takes the clean labels and returns a :class:`NoisyLabels` holding the noisy
labels and the *realised* transition matrix ``T[i, j]`` = share of the samples of clean class
``i`` whose noisy label is ``j`` (so the rows of classes present sum to 1).

Conventions, chosen where published code disagrees (see ``docs/training.md``):

- **Exact counts.** In every source class ``c`` with ``n_c`` samples exactly
  ``round(rate * n_c)`` samples (half rounds up) are picked without replacement, as APL / ALFs /
  SCE do with ``int(...)``; the realised per-class rate is therefore ``rate`` up to one sample,
  not only in expectation as with Patrini's per-sample multinomial draw.
- **Pools from the clean labels.** The samples to flip are always drawn from the *clean*
  labels, so for CIFAR-10 a cat turned into a dog is never turned back into a cat (APL / ALFs
  compute the dog pool from the already-modified labels, which gives cat 24.4 % and dog 40.4 %
  noise at rate 0.4 instead of 40 % each).
- **Symmetric noise excludes the true class** by default: a picked sample gets a uniform draw
  over the ``K - 1`` other classes, so the realised flip rate is ``rate``. With
  ``include_true_class=True`` the draw is over all ``K`` classes (GJS), and the realised flip
  rate is about ``rate * (K - 1) / K``.
- **CIFAR-100 asymmetric noise uses the true super-classes** (the 20 x 5 table
  :data:`CIFAR100_SUPERCLASSES`): each fine class flips to the next fine class of its own
  super-class, circularly, in ascending fine-label order. Patrini / APL / ALFs / SCE use blocks
  of five consecutive fine labels instead, which are not super-classes (CIFAR-100's fine labels
  are alphabetical: apple, aquarium_fish, baby, bear, beaver form their first "super-class").

Seeding: each call draws from ``numpy.random.default_rng(seed)`` and visits classes in
ascending order, so the same ``(labels, rate, seed)`` always gives the same noisy labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "NoisyLabels",
    "AsymmetricMapping",
    "ASYMMETRIC_MAPPINGS",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_SUPERCLASS_NAMES",
    "NOISE_TYPES",
    "symmetric_noise",
    "asymmetric_noise",
    "pair_flip_noise",
    "inject_noise",
    "transition_matrix",
]

NOISE_TYPES = ("none", "symmetric", "symmetric_incl", "asymmetric", "pairflip")


@dataclass(frozen=True)
class NoisyLabels:
    """Result of a noise generator.

    Attributes:
        labels: the noisy labels, same length as the clean ones (a ``numpy`` int64 array, or an
            int64 ``Tensor`` on the input's device when the clean labels were a tensor).
        transition: realised ``[K, K]`` float64 matrix, ``T[i, j]`` = share of clean class ``i``
            labelled ``j``; rows of classes without samples are all zero.
        flipped: boolean mask of the samples whose label changed.
    """

    labels: np.ndarray | torch.Tensor
    transition: np.ndarray
    flipped: np.ndarray

    @property
    def noise_rate(self) -> float:
        """Share of all samples whose label changed."""
        return float(self.flipped.mean()) if self.flipped.size else 0.0


@dataclass(frozen=True)
class AsymmetricMapping:
    """A published class-flip mapping ``source -> target`` for one dataset."""

    dataset: str
    num_classes: int
    mapping: Mapping[int, int]
    source: str
    verified: bool = True


# CIFAR-100's 20 super-classes (coarse labels 0..19, in the dataset's order) and their five fine
# labels (indices into the alphabetical fine-label list of the dataset's "meta" file).
CIFAR100_SUPERCLASS_NAMES = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)
CIFAR100_SUPERCLASSES: tuple[tuple[int, ...], ...] = (
    (4, 30, 55, 72, 95),  # beaver, dolphin, otter, seal, whale
    (1, 32, 67, 73, 91),  # aquarium_fish, flatfish, ray, shark, trout
    (54, 62, 70, 82, 92),  # orchid, poppy, rose, sunflower, tulip
    (9, 10, 16, 28, 61),  # bottle, bowl, can, cup, plate
    (0, 51, 53, 57, 83),  # apple, mushroom, orange, pear, sweet_pepper
    (22, 39, 40, 86, 87),  # clock, keyboard, lamp, telephone, television
    (5, 20, 25, 84, 94),  # bed, chair, couch, table, wardrobe
    (6, 7, 14, 18, 24),  # bee, beetle, butterfly, caterpillar, cockroach
    (3, 42, 43, 88, 97),  # bear, leopard, lion, tiger, wolf
    (12, 17, 37, 68, 76),  # bridge, castle, house, road, skyscraper
    (23, 33, 49, 60, 71),  # cloud, forest, mountain, plain, sea
    (15, 19, 21, 31, 38),  # camel, cattle, chimpanzee, elephant, kangaroo
    (34, 63, 64, 66, 75),  # fox, porcupine, possum, raccoon, skunk
    (26, 45, 77, 79, 99),  # crab, lobster, snail, spider, worm
    (2, 11, 35, 46, 98),  # baby, boy, girl, man, woman
    (27, 29, 44, 78, 93),  # crocodile, dinosaur, lizard, snake, turtle
    (36, 50, 65, 74, 80),  # hamster, mouse, rabbit, shrew, squirrel
    (47, 52, 56, 59, 96),  # maple_tree, oak_tree, palm_tree, pine_tree, willow_tree
    (8, 13, 48, 58, 90),  # bicycle, bus, motorcycle, pickup_truck, train
    (41, 69, 81, 85, 89),  # lawn_mower, rocket, streetcar, tank, tractor
)


def _cifar100_next_in_superclass() -> dict[int, int]:
    mapping = {}
    for fine in CIFAR100_SUPERCLASSES:
        for i, c in enumerate(fine):
            mapping[c] = fine[(i + 1) % len(fine)]
    return mapping


ASYMMETRIC_MAPPINGS: dict[str, AsymmetricMapping] = {
    "cifar10": AsymmetricMapping(
        "cifar10",
        10,
        {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},  # truck->automobile, bird->airplane, cat<->dog, deer->horse
        "Patrini et al. 2017; APL, ALFs, SCE",
    ),
    "cifar100": AsymmetricMapping(
        "cifar100",
        100,
        _cifar100_next_in_superclass(),
        "next class within the true super-class, circularly (GJS); Patrini/APL use index blocks",
    ),
    "mnist": AsymmetricMapping(
        "mnist",
        10,
        {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},  # 7->1, 2->7, 5<->6, 3->8
        "Patrini et al. 2017; APL, ALFs, SCE",
    ),
    "fashion_mnist": AsymmetricMapping(
        "fashion_mnist",
        10,
        # boot->sneaker, sneaker->sandal, pullover->shirt, coat<->dress
        {9: 7, 7: 5, 2: 6, 4: 3, 3: 4},
        "Zhang & Sabuncu 2018 (GCE paper); not found in any published code",
        verified=False,
    ),
}


def _as_numpy(labels: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=True)


def _check(labels: np.ndarray, num_classes: int, rate: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")


def _count(rate: float, n: int) -> int:
    # Round half up: the per-class count is the closest integer to rate * n.
    return int(np.floor(rate * n + 0.5))


def transition_matrix(clean: object, noisy: object, num_classes: int) -> np.ndarray:
    """Realised ``[K, K]`` transition matrix: ``T[i, j]`` = share of clean class ``i`` labelled ``j``."""
    c, n = _as_numpy(clean), _as_numpy(noisy)
    if c.shape != n.shape:
        raise ValueError(f"clean and noisy labels differ in length: {c.shape[0]} vs {n.shape[0]}")
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (c, n), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _result(original: object, clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> NoisyLabels:
    labels: np.ndarray | torch.Tensor = noisy
    if isinstance(original, torch.Tensor):
        labels = torch.from_numpy(noisy).to(original.device)
    return NoisyLabels(labels, transition_matrix(clean, noisy, num_classes), noisy != clean)


def symmetric_noise(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    rate: float,
    *,
    seed: int = 0,
    include_true_class: bool = False,
) -> NoisyLabels:
    """Symmetric (uniform) label noise with an exact count per class.

    In each class, ``round(rate * n_c)`` samples are picked and given a uniformly drawn label:
    over the ``K - 1`` other classes (default; realised flip rate ``rate``), or over all ``K``
    classes with ``include_true_class=True`` (realised flip rate about ``rate * (K - 1) / K``).

    Args:
        labels: clean labels ``[N]`` in ``[0, num_classes)``.
        num_classes: ``K``.
        rate: share of each class to relabel, in ``[0, 1]``.
        seed: seed of the draw.
        include_true_class: draw the new label over all classes, true one included.

    Returns:
        :class:`NoisyLabels`.
    """
    clean = _as_numpy(labels)
    _check(clean, num_classes, rate)
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    for c in range(num_classes):
        pool = np.flatnonzero(clean == c)
        picked = rng.choice(pool, _count(rate, pool.size), replace=False)
        if include_true_class:
            noisy[picked] = rng.integers(0, num_classes, picked.size)
        else:
            # Uniform over the K - 1 other classes: an offset in [1, K) never lands on c.
            noisy[picked] = (c + rng.integers(1, num_classes, picked.size)) % num_classes
    return _result(labels, clean, noisy, num_classes)


def pair_flip_noise(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    rate: float,
    *,
    seed: int = 0,
) -> NoisyLabels:
    """Pair-flip noise (Han et al., Co-teaching, 2018).

    ``round(rate * n_c)`` samples of every class ``c`` become ``c + 1 mod K``.
    """
    clean = _as_numpy(labels)
    _check(clean, num_classes, rate)
    mapping = {c: (c + 1) % num_classes for c in range(num_classes)}
    return _result(labels, clean, _flip(clean, mapping, rate, seed), num_classes)


def _flip(clean: np.ndarray, mapping: Mapping[int, int], rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    for source in sorted(mapping):
        pool = np.flatnonzero(clean == source)  # the clean labels, never the already-flipped ones
        picked = rng.choice(pool, _count(rate, pool.size), replace=False)
        noisy[picked] = mapping[source]
    return noisy


def asymmetric_noise(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    rate: float,
    *,
    dataset: str,
    seed: int = 0,
) -> NoisyLabels:
    """Class-dependent noise with the published mapping of ``dataset``.

    ``round(rate * n_s)`` samples of every source class ``s`` of the mapping (drawn from the
    clean labels) get the label ``mapping[s]``; other classes stay clean.

    Args:
        labels: clean labels ``[N]``.
        rate: share of each source class to flip, in ``[0, 1]``.
        dataset: a key of :data:`ASYMMETRIC_MAPPINGS`: ``"cifar10"``, ``"cifar100"``,
            ``"mnist"`` or ``"fashion_mnist"`` (unverified: warns).
        seed: seed of the draw.

    Returns:
        :class:`NoisyLabels`.
    """
    if dataset not in ASYMMETRIC_MAPPINGS:
        raise ValueError(f"dataset must be one of {sorted(ASYMMETRIC_MAPPINGS)} for asymmetric noise, got {dataset!r}")
    spec = ASYMMETRIC_MAPPINGS[dataset]
    if not spec.verified:
        warnings.warn(
            f"the {dataset} asymmetric mapping is from the GCE paper's text ({spec.source}); "
            "it was not checked against a published implementation",
            stacklevel=2,
        )
    clean = _as_numpy(labels)
    _check(clean, spec.num_classes, rate)
    return _result(labels, clean, _flip(clean, spec.mapping, rate, seed), spec.num_classes)


def inject_noise(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    noise_type: str,
    rate: float,
    *,
    seed: int = 0,
    dataset: str | None = None,
) -> NoisyLabels:
    """Dispatch on ``noise_type`` (one of :data:`NOISE_TYPES`); ``dataset`` names the asymmetric mapping."""
    if noise_type == "none" or rate == 0.0:
        clean = _as_numpy(labels)
        _check(clean, num_classes, 0.0)
        return _result(labels, clean, clean.copy(), num_classes)
    if noise_type == "symmetric":
        return symmetric_noise(labels, num_classes, rate, seed=seed)
    if noise_type == "symmetric_incl":
        return symmetric_noise(labels, num_classes, rate, seed=seed, include_true_class=True)
    if noise_type == "pairflip":
        return pair_flip_noise(labels, num_classes, rate, seed=seed)
    if noise_type == "asymmetric":
        if dataset is None:
            raise ValueError("asymmetric noise needs dataset= (cifar10, cifar100, mnist or fashion_mnist)")
        result = asymmetric_noise(labels, rate, dataset=dataset, seed=seed)
        if result.transition.shape[0] != num_classes:
            raise ValueError(f"the {dataset} mapping has {result.transition.shape[0]} classes, not {num_classes}")
        return result
    raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
