"""Label-noise generators: exact per-class counts, seeding, realised transition matrices, mappings."""

import numpy as np
import pytest
import torch

from robustkernels import noise

# CIFAR-100 coarse label of each fine label, in fine-label order, as stored in the dataset's own
# "train" pickle (the widely copied 100-entry vector). Typed independently of the 20x5 table in
# robustkernels.noise, which must agree with it.
CIFAR100_FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def _labels(k, per_class, seed=0, uneven=False):
    rng = np.random.default_rng(seed)
    counts = [per_class + (c * 7 % 13 if uneven else 0) for c in range(k)]
    labels = np.repeat(np.arange(k), counts)
    rng.shuffle(labels)
    return labels


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8, 1.0])
def test_symmetric_exact_count_per_class_and_true_class_excluded(rate):
    k = 10
    clean = _labels(k, 97, uneven=True)
    res = noise.symmetric_noise(clean, k, rate, seed=3)
    for c in range(k):
        rows = clean == c
        expected = int(np.floor(rate * rows.sum() + 0.5))
        assert res.flipped[rows].sum() == expected
        assert (res.labels[rows & res.flipped] != c).all()
        # Realised matrix: diagonal is exactly the kept share, row sums to 1.
        assert res.transition[c, c] == pytest.approx(1 - expected / rows.sum(), abs=1e-12)
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(res.transition, noise.transition_matrix(clean, res.labels, k))


def test_symmetric_off_diagonal_is_uniform():
    # 40000 samples of class 0 at rate 0.5: 20000 flips over 9 classes, ~2222 each (sd ~44).
    k = 10
    clean = np.zeros(40000, dtype=np.int64)
    res = noise.symmetric_noise(clean, k, 0.5, seed=1)
    off = res.transition[0, 1:]
    assert off.sum() == pytest.approx(0.5)
    np.testing.assert_allclose(off, 0.5 / 9, rtol=0.08)


def test_symmetric_include_true_class_realised_rate():
    k, n = 4, 40000
    clean = _labels(k, n // k)
    res = noise.symmetric_noise(clean, k, 0.6, seed=2, include_true_class=True)
    # Picked share 0.6, of which 1/K keep their label: realised flip rate 0.6 * 3/4 = 0.45 (sd ~0.0025).
    assert res.noise_rate == pytest.approx(0.45, abs=0.01)
    # Without the option the realised rate is exactly the requested one.
    assert noise.symmetric_noise(clean, k, 0.6, seed=2).noise_rate == pytest.approx(0.6, abs=1e-12)


def test_seeding_is_reproducible_and_input_untouched():
    clean = _labels(10, 50)
    before = clean.copy()
    a = noise.symmetric_noise(clean, 10, 0.4, seed=7)
    b = noise.symmetric_noise(clean, 10, 0.4, seed=7)
    c = noise.symmetric_noise(clean, 10, 0.4, seed=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels != c.labels).any()
    np.testing.assert_array_equal(clean, before)


def test_tensor_in_tensor_out():
    clean = torch.from_numpy(_labels(10, 30))
    res = noise.pair_flip_noise(clean, 10, 0.3, seed=0)
    assert isinstance(res.labels, torch.Tensor) and res.labels.dtype == torch.int64
    np.testing.assert_array_equal(res.labels.numpy(), noise.pair_flip_noise(clean.numpy(), 10, 0.3).labels)


def test_cifar10_mapping_pools_from_clean_labels():
    # 1000 per class as CIFAR-10's test set; rate 0.4 flips exactly 400 of each source class.
    clean = _labels(10, 1000)
    res = noise.asymmetric_noise(clean, 0.4, dataset="cifar10", seed=0)
    expected = np.eye(10)
    for s, t in {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}.items():
        expected[s, s], expected[s, t] = 0.6, 0.4
    np.testing.assert_allclose(res.transition, expected, atol=1e-12)
    # cat <-> dog: both exactly 40 % (APL's sequential pools give 24.4 % / 40.4 %).
    for c in (3, 5):
        assert (res.labels[clean == c] != c).mean() == pytest.approx(0.4)
    assert res.noise_rate == pytest.approx(0.2)


def test_mnist_mapping():
    clean = _labels(10, 200)
    res = noise.asymmetric_noise(clean, 1.0, dataset="mnist")
    moved = {int(c): int(res.labels[clean == c][0]) for c in range(10) if (res.labels[clean == c] != c).all()}
    assert moved == {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


def test_fashion_mnist_mapping_is_marked_unverified():
    assert not noise.ASYMMETRIC_MAPPINGS["fashion_mnist"].verified
    with pytest.warns(UserWarning, match="not checked"):
        res = noise.asymmetric_noise(_labels(10, 20), 0.5, dataset="fashion_mnist")
    assert res.transition[9, 7] == pytest.approx(0.5) and res.transition[4, 3] == pytest.approx(0.5)


def test_cifar100_superclass_table_matches_coarse_labels():
    table = noise.CIFAR100_SUPERCLASSES
    assert len(table) == 20 and all(len(fine) == 5 for fine in table)
    assert sorted(c for fine in table for c in fine) == list(range(100))
    for coarse, fine in enumerate(table):
        assert all(CIFAR100_FINE_TO_COARSE[c] == coarse for c in fine)


def test_cifar100_flips_stay_in_true_superclass_as_5_cycles():
    mapping = noise.ASYMMETRIC_MAPPINGS["cifar100"].mapping
    assert sorted(mapping) == list(range(100))
    for c, t in mapping.items():
        assert t != c and CIFAR100_FINE_TO_COARSE[t] == CIFAR100_FINE_TO_COARSE[c]
    for fine in noise.CIFAR100_SUPERCLASSES:
        c, orbit = fine[0], []
        for _ in range(5):
            orbit.append(c)
            c = mapping[c]
        assert c == fine[0] and sorted(orbit) == list(fine)
    # apple (0) goes to mushroom (51), its next class in fruit_and_vegetables, not to aquarium_fish (1).
    assert mapping[0] == 51
    clean = _labels(100, 50)
    res = noise.asymmetric_noise(clean, 0.2, dataset="cifar100", seed=4)
    assert res.noise_rate == pytest.approx(0.2)
    assert res.transition[0, 51] == pytest.approx(0.2)


def test_pair_flip():
    clean = _labels(7, 40, uneven=True)
    res = noise.pair_flip_noise(clean, 7, 0.25, seed=5)
    for c in range(7):
        rows = clean == c
        n_flip = int(np.floor(0.25 * rows.sum() + 0.5))
        assert res.transition[c, (c + 1) % 7] == pytest.approx(n_flip / rows.sum())
        assert res.transition[c, c] == pytest.approx(1 - n_flip / rows.sum())


def test_inject_noise_dispatch_and_errors():
    clean = _labels(10, 20)
    assert noise.inject_noise(clean, 10, "none", 0.5).noise_rate == 0.0
    np.testing.assert_array_equal(
        noise.inject_noise(clean, 10, "symmetric", 0.3, seed=1).labels,
        noise.symmetric_noise(clean, 10, 0.3, seed=1).labels,
    )
    with pytest.raises(ValueError, match="noise_type"):
        noise.inject_noise(clean, 10, "uniform", 0.3)
    with pytest.raises(ValueError, match="dataset"):
        noise.inject_noise(clean, 10, "asymmetric", 0.3)
    with pytest.raises(ValueError, match="100 classes"):
        noise.inject_noise(clean, 10, "asymmetric", 0.3, dataset="cifar100")
    with pytest.raises(ValueError, match="rate"):
        noise.symmetric_noise(clean, 10, 1.5)
    with pytest.raises(ValueError, match="labels must be in"):
        noise.symmetric_noise(clean, 5, 0.1)
    with pytest.raises(ValueError, match="dataset must be one of"):
        noise.asymmetric_noise(clean, 0.1, dataset="svhn")
    with pytest.raises(TypeError, match="integer"):
        noise.symmetric_noise(clean.astype(float), 10, 0.1)
