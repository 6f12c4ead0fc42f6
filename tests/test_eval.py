"""jldm.eval: Frechet distance against closed forms, the digits classifier and its cache, grids."""

from __future__ import annotations

import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import jldm.eval.classifier as classifier_mod
import jldm.eval.quality as quality_mod
from jldm.data.datasets import Dataset
from jldm.errors import UserError
from jldm.eval import (
    Classifier,
    feature_stats,
    frechet_distance,
    get_classifier,
    make_grid,
    make_reference,
    sample_quality,
    save_grid,
    score_samples,
)


def _random_spd(rng: np.random.Generator, f: int) -> np.ndarray:
    a = rng.normal(size=(f, f))
    return a @ a.T / f + 0.1 * np.eye(f)


def _frechet_eig(mu1, sigma1, mu2, sigma2) -> float:
    """Independent reference: tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = np.sum(np.sqrt(np.clip(inner, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def test_frechet_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_spd(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    s1, s2 = rng.uniform(0.1, 3.0, size=7), rng.uniform(0.1, 3.0, size=7)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_of_full_covariances_matches_eigen_reference():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    sigma1, sigma2 = _random_spd(rng, 12), _random_spd(rng, 12)
    expected = _frechet_eig(mu1, sigma1, mu2, sigma2)
    assert expected > 1.0
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)
    # float32 inputs are promoted, not computed in float32.
    got32 = frechet_distance(*(np.float32(a) for a in (mu1, sigma1, mu2, sigma2)))
    expected32 = _frechet_eig(*(np.float64(np.float32(a)) for a in (mu1, sigma1, mu2, sigma2)))
    assert got32 == pytest.approx(expected32, rel=1e-8)


def test_frechet_of_rank_deficient_covariances_is_finite_and_close_to_reference():
    rng = np.random.default_rng(3)
    # Fewer samples than features, as with a small sample batch: singular covariances.
    mu1, sigma1 = feature_stats(rng.normal(size=(6, 20)))
    mu2, sigma2 = feature_stats(rng.normal(size=(6, 20)) + 0.5)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(got)
    assert got == pytest.approx(_frechet_eig(mu1, sigma1, mu2, sigma2), rel=1e-3)


def test_frechet_of_singular_covariances_matches_the_full_rank_formula_in_the_limit():
    """Fewer samples than features: no ridge, the exact value of the singular case."""
    rng = np.random.default_rng(8)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    low = rng.normal(size=(10, 3))
    sigma1 = low @ low.T  # rank 3
    sigma2 = _random_spd(rng, 10)
    want = _frechet_eig(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, abs=1e-6)
    # A vanishing ridge approaches it (like sqrt(eps)): the singular case is the limit.
    near = [frechet_distance(mu1, sigma1 + e * np.eye(10), mu2, sigma2) for e in (1e-6, 1e-10)]
    assert abs(near[1] - want) < 1e-3 < abs(near[0] - want)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_matches_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 5)).astype(np.float32) * np.arange(1, 6) + 3.0
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and sigma.shape == (5, 5)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64).T), rtol=1e-12)
    with pytest.raises(UserError, match="at least 2"):
        feature_stats(x[:1])


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """sklearn digits as uint8 [N, 8, 8, 1], split 1300 train / 497 test by a fixed shuffle."""
    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(labels))
    tr, te = perm[:1300], perm[1300:]
    return {
        "train_images": images[tr],
        "train_labels": labels[tr],
        "test_images": images[te],
        "test_labels": labels[te],
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def clf(digits, cache_dir) -> Classifier:
    # Named as classifier_for names it, so the end-to-end test below finds this cache.
    path = f"{cache_dir}/classifier_digits.npz"
    return get_classifier(digits["train_images"], digits["train_labels"], path)


def _unit(images_u8: np.ndarray) -> np.ndarray:
    return images_u8.astype(np.float32) / 255.0


def test_classifier_is_accurate_on_held_out_digits_at_any_resolution(clf, digits):
    x, y = _unit(digits["test_images"]), digits["test_labels"]
    predictions = clf.predict(x)
    assert predictions.shape == y.shape and predictions.dtype == np.int32
    assert clf.accuracy(x, y) >= 0.9
    up = np.asarray(jax.image.resize(x, (x.shape[0], 16, 16, 1), "linear"))
    assert clf.accuracy(up, y) >= 0.9
    # Shuffled labels are a sanity floor: the figure measures agreement, not a constant.
    assert clf.accuracy(x, np.random.default_rng(0).permutation(y)) < 0.3


def test_classifier_rejects_wrong_channel_count(clf, digits):
    rgb = np.repeat(_unit(digits["test_images"]), 3, axis=-1)
    with pytest.raises(UserError, match="channel"):
        clf.predict(rgb)


def test_features_give_small_frechet_for_real_digits_and_large_for_noise(clf, digits):
    test = clf.features(_unit(digits["test_images"]))
    assert test.shape == (len(digits["test_labels"]), clf.feature_dim)
    stats_test = feature_stats(test)
    assert frechet_distance(*stats_test, *stats_test) == pytest.approx(0.0, abs=1e-6)
    real = frechet_distance(
        *feature_stats(clf.features(_unit(digits["train_images"]))), *stats_test
    )
    noise_images = np.random.default_rng(5).uniform(size=(500, 8, 8, 1)).astype(np.float32)
    noise = frechet_distance(*feature_stats(clf.features(noise_images)), *stats_test)
    assert noise > 10.0 * real


def test_classifier_cache_round_trip_loads_without_training(clf, digits, cache_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("retrained although a valid cache exists")

    monkeypatch.setattr(classifier_mod, "_train", fail)
    loaded = get_classifier(
        digits["train_images"], digits["train_labels"], f"{cache_dir}/classifier_digits.npz"
    )
    x = _unit(digits["test_images"])
    np.testing.assert_array_equal(loaded.predict(x), clf.predict(x))
    np.testing.assert_array_equal(loaded.features(x), clf.features(x))
    for (w, b), (w0, b0) in zip(loaded.params, clf.params, strict=True):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)


def test_stale_cache_for_other_data_is_retrained(digits, tmp_path, monkeypatch):
    calls = []

    def counting_train(x, labels, num_classes, seed=0):
        # Only whether training happens matters here, not the weights.
        calls.append(x.shape)
        sizes = (x.shape[1], *classifier_mod.HIDDEN, num_classes)
        return [
            (np.full((a, b), len(calls), np.float32), np.zeros(b, np.float32))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]

    monkeypatch.setattr(classifier_mod, "_train", counting_train)
    path = str(tmp_path / "c.npz")
    images, labels = digits["train_images"], digits["train_labels"]
    get_classifier(images[:600], labels[:600], path)
    get_classifier(images[:600], labels[:600], path)
    assert len(calls) == 1
    other = get_classifier(images[:700], labels[:700], path)
    assert len(calls) == 2
    assert Classifier.load(path).data_key == other.data_key
    (tmp_path / "c.npz").write_bytes(b"not an npz")
    get_classifier(images[:700], labels[:700], path)
    assert len(calls) == 3


def _resize(images01: np.ndarray, size: int) -> np.ndarray:
    n, _, _, c = images01.shape
    return np.asarray(jax.image.resize(images01, (n, size, size, c), "linear", antialias=True))


def test_score_samples_compares_with_the_test_split_at_the_sample_resolution(clf, digits):
    reference = make_reference(clf, digits["test_images"], digits["test_labels"])
    test, labels = _unit(digits["test_images"]), digits["test_labels"]
    for size in (8, 16):
        # The test split itself, rendered as a model at this resolution would see it.
        real = score_samples(reference, _resize(test, size), labels)
        assert real["frechet"] == pytest.approx(0.0, abs=1e-6)
        assert real["precision"] == real["recall"] == 1.0
        assert real["class_accuracy"] >= 0.9
        assert real["num_samples"] == len(labels)
    assert score_samples(reference, test, labels)["class_accuracy"] == reference.test_accuracy
    held_out = score_samples(reference, _resize(_unit(digits["train_images"][:300]), 16))
    noise_images = np.random.default_rng(6).uniform(size=(300, 16, 16, 1)).astype(np.float32)
    noise = score_samples(reference, noise_images, np.zeros(300, np.int32))
    assert held_out["class_accuracy"] is None
    assert 0.0 < held_out["frechet"] < 0.1 * noise["frechet"]
    assert abs(held_out["kid"]) < 0.01 * noise["kid"]
    # Held-out digits against as many test digits (measured 0.91, 0.91); noise lies off them.
    assert held_out["precision"] > 0.8 and held_out["recall"] > 0.8
    assert noise["precision"] == noise["recall"] == 0.0
    few = score_samples(reference, noise_images[:3])  # k = 3 needs 4 samples
    assert few["precision"] is None and few["recall"] is None
    assert noise["class_accuracy"] < 0.5
    with pytest.raises(UserError, match="labels"):
        score_samples(reference, noise_images, np.full(300, 10))


@pytest.mark.parametrize("per_class", [10, 50])
def test_kernel_distance_ranks_real_digits_above_worse_sets_at_small_n(clf, digits, per_class):
    """At n = 100 and 500, training digits score better on the kernel distance than blurred
    (16 -> 8 -> 16) or less varied (two per class, repeated) ones, on every draw (measured:
    real -0.1 to -0.6, the others 0.6 to 3.7). The plug-in Frechet distance of the same real
    digits is biased by n: at 100 it is over twice its value at 500."""
    reference = make_reference(clf, digits["test_images"], digits["test_labels"])
    train, labels = _unit(digits["train_images"]), digits["train_labels"]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        pick = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(10)]
        )
        real = _resize(train[pick], 16)
        blurred = _resize(_resize(real, 8), 16)
        two = np.concatenate(
            [np.repeat(real[k * per_class :][:2], per_class // 2, 0) for k in range(10)]
        )
        kid = {
            name: score_samples(reference, x)["kid"]
            for name, x in (("real", real), ("blurred", blurred), ("two", two))
        }
        assert kid["real"] < 0.3 * min(kid["two"], kid["blurred"]), (per_class, seed, kid)
    if per_class == 50:
        fd = [score_samples(reference, _resize(train[pick[k::5]], 16))["frechet"] for k in range(5)]
        assert min(fd) > 2.0 * score_samples(reference, real)["frechet"], fd


def test_sample_quality_uses_load_split_and_the_cached_classifier(
    clf, digits, cache_dir, monkeypatch
):
    loaded = []
    digits_on_disk = Dataset("digits", "unused")

    def load_split(dataset, split):
        assert dataset == digits_on_disk
        loaded.append(split)
        return types.SimpleNamespace(
            images=digits[f"{split}_images"], labels=digits[f"{split}_labels"]
        )

    # A stand-in data package keeps this test independent of jldm.data's builders.
    monkeypatch.setitem(sys.modules, "jldm.data", types.SimpleNamespace(load_split=load_split))
    monkeypatch.setattr(classifier_mod, "_train", lambda *a, **k: pytest.fail("retrained"))
    quality_mod._reference_cached.cache_clear()
    up = _resize(_unit(digits["train_images"][:300]), 16)
    result = sample_quality(up, digits["train_labels"][:300], digits_on_disk, cache_dir)
    assert result["class_accuracy"] >= 0.9
    assert result["test_accuracy"] == pytest.approx(
        clf.accuracy(_unit(digits["test_images"]), digits["test_labels"])
    )
    assert 0.0 < result["frechet"] < 50.0
    assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0
    again = sample_quality(up, None, digits_on_disk, cache_dir)
    assert again["frechet"] == result["frechet"] and again["class_accuracy"] is None
    # The second call reuses the reference instead of reloading both splits.
    assert sorted(loaded) == ["test", "train"]
    quality_mod._reference_cached.cache_clear()


def test_make_grid_places_each_image_in_its_cell():
    n, h, w, ncols, pad, scale = 5, 2, 3, 3, 1, 2
    values = np.arange(1, n + 1) / 10.0
    images = np.ones((n, h, w, 1), np.float32) * values[:, None, None, None]
    grid = make_grid(images, ncols=ncols, pad=pad, scale=scale)
    ch, cw = h * scale, w * scale
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (ch + pad) + pad, 3 * (cw + pad) + pad, 1)
    pad_u8 = 128  # round(0.5 * 255)
    for i in range(2 * ncols):
        r, k = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + k * (cw + pad)
        cell = grid[y : y + ch, x : x + cw, 0]
        expected = round(values[i] * 255) if i < n else pad_u8
        assert np.all(cell == expected), f"cell {i}"
        grid[y : y + ch, x : x + cw, 0] = pad_u8
    # With every cell blanked out only padding remains.
    assert np.all(grid == pad_u8)


def test_make_grid_keeps_rgb_channels_and_clips():
    colours = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [2.0, -1.0, 0.5]])
    images = np.ones((4, 2, 2, 3)) * colours[:, None, None, :]
    grid = make_grid(images, ncols=2, pad=0)
    assert grid.shape == (4, 4, 3)
    np.testing.assert_array_equal(grid[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(grid[0, 2], [0, 255, 0])
    np.testing.assert_array_equal(grid[2, 0], [0, 0, 255])
    np.testing.assert_array_equal(grid[3, 3], [255, 0, 128])
    with pytest.raises(UserError, match="grid"):
        make_grid(np.zeros((2, 4, 4, 4)), ncols=2)


def test_save_grid_writes_upscaled_grayscale_png(tmp_path):
    images = np.random.default_rng(7).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    path = save_grid(images, str(tmp_path / "sub" / "grid.png"), ncols=3)
    with Image.open(path) as picture:
        assert picture.mode == "L"
        pixels = np.asarray(picture)
    # 8x8 cells are scaled 8x to 64 px so they are visible.
    np.testing.assert_array_equal(pixels, make_grid(images, ncols=3, scale=8)[..., 0])
    assert pixels.shape == (2 * 65 + 1, 3 * 65 + 1)
