"""Kernel distance (unbiased MMD^2, cubic polynomial kernel) and FD_inf against an explicit-matrix
reference, a closed-form population MMD^2 of Gaussians, the closed-form Frechet distance of
Gaussians, and real digit images."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from jldm.errors import UserError
from jldm.eval import frechet_inf as fi_mod
from jldm.eval import kid as kid_mod
from jldm.eval.frechet import feature_stats, frechet_distance
from jldm.eval.frechet_inf import frechet_by_size, frechet_distance_inf, subset_sizes
from jldm.eval.kid import kernel_distance, kernel_distance_subsets


def loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s unbiased MMD^2, one kernel entry at a time."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b, strict=True)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2.0 * kxy


def gaussian_cross_moment(mu1, cov1, mu2, cov2) -> float:
    """E[(x . y / d + 1)^3] for independent x ~ N(mu1, cov1), y ~ N(mu2, cov2), in closed form.

    (s + 1)^3 = s^3 + 3 s^2 + 3 s + 1 with s = x . y / d; E[(x.y)^k] = <E[x^(k)], E[y^(k)]>, the
    inner product of the k-th moment tensors, and a Gaussian's third moment tensor is
    mu_i mu_j mu_k + mu_i C_jk + mu_j C_ik + mu_k C_ij.
    """
    d = len(mu1)

    def moments(mu, cov):
        second = cov + np.outer(mu, mu)
        third = np.einsum("i,j,k->ijk", mu, mu, mu)
        third = third + np.einsum("i,jk->ijk", mu, cov)
        third = third + np.einsum("j,ik->ijk", mu, cov) + np.einsum("k,ij->ijk", mu, cov)
        return second, third

    a2, a3 = moments(mu1, cov1)
    b2, b3 = moments(mu2, cov2)
    s1, s2, s3 = mu1 @ mu2 / d, np.sum(a2 * b2) / d**2, np.sum(a3 * b3) / d**3
    return float(s3 + 3.0 * s2 + 3.0 * s1 + 1.0)


def gaussian_mmd2(mu1, cov1, mu2, cov2) -> float:
    """Population MMD^2 of the cubic polynomial kernel between two Gaussians."""
    return (
        gaussian_cross_moment(mu1, cov1, mu1, cov1)
        + gaussian_cross_moment(mu2, cov2, mu2, cov2)
        - 2.0 * gaussian_cross_moment(mu1, cov1, mu2, cov2)
    )


def test_kernel_distance_matches_the_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), 0.5 + rng.normal(size=(6, 5))
    assert kernel_distance(x, y) == pytest.approx(loop_mmd2(x, y), rel=1e-10, abs=1e-12)


def test_blocked_sums_match_the_whole_matrix(monkeypatch):
    # Blocks of 4 rows on sets of 11 and 7 rows: partial blocks, blocks off the diagonal.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(11, 3)), rng.normal(size=(7, 3)) * 1.5
    whole = kernel_distance(x, y)
    monkeypatch.setattr(kid_mod, "_BLOCK", 4)
    assert kernel_distance(x, y) == pytest.approx(whole, rel=1e-12)
    assert kernel_distance(x, y) == pytest.approx(loop_mmd2(x, y), rel=1e-10)


def test_gaussian_closed_form_matches_a_monte_carlo_mean():
    # Checks the reference below it: E[k(x, y)] against the mean over 400k independent pairs.
    rng = np.random.default_rng(2)
    mu1, mu2 = np.array([0.5, -1.0, 0.0]), np.array([1.0, 0.5, 2.0])
    c1, c2 = np.diag([1.0, 2.0, 0.5]), np.array([[1.0, 0.3, 0], [0.3, 1.0, 0], [0, 0, 2.0]])
    x = rng.multivariate_normal(mu1, c1, size=400_000)
    y = rng.multivariate_normal(mu2, c2, size=400_000)
    k = (np.sum(x * y, 1) / 3 + 1.0) ** 3
    assert gaussian_cross_moment(mu1, c1, mu2, c2) == pytest.approx(
        k.mean(), abs=4 * k.std() / np.sqrt(len(k))
    )


def repeats(draw, count: int) -> tuple[float, float]:
    """Mean and standard error of kernel_distance over `count` independent pairs of draws."""
    values = np.array([kernel_distance(*draw(np.random.default_rng(s))) for s in range(count)])
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(count))


def test_unbiased_for_one_distribution_while_the_plug_in_is_not():
    d, n, m = 4, 12, 20

    def draw(rng):
        return rng.normal(size=(n, d)), rng.normal(size=(m, d))

    mean, se = repeats(draw, 600)
    assert abs(mean) < 3.5 * se
    # The same data through the biased V-statistic (diagonals included) sits well above 0, so the
    # check above has the power to see a bias of that size.
    v_stat = []
    for s in range(600):
        x, y = draw(np.random.default_rng(s))
        k = kid_mod.polynomial_kernel
        v_stat.append(k(x, x).mean() + k(y, y).mean() - 2.0 * k(x, y).mean())
    assert np.mean(v_stat) > 10 * se


def test_mean_matches_the_population_mmd_of_shifted_gaussians():
    d, n, m = 3, 15, 25
    mu1, mu2 = np.zeros(d), np.array([0.6, 0.0, -0.3])
    c1, c2 = np.eye(d), np.diag([1.0, 1.5, 0.7])

    def draw(rng):
        x = rng.multivariate_normal(mu1, c1, size=n)
        return x, rng.multivariate_normal(mu2, c2, size=m)

    truth = gaussian_mmd2(mu1, c1, mu2, c2)
    mean, se = repeats(draw, 800)
    assert truth > 10 * se  # the shift is visible at this many repeats
    assert mean == pytest.approx(truth, abs=3.5 * se)


def test_subsets_of_whole_sets_reproduce_the_full_estimate():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 0.3
    mean, std = kernel_distance_subsets(x, y, subset_size=50, subsets=3)
    assert mean == pytest.approx(kernel_distance(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    mean, std = kernel_distance_subsets(x, y, subset_size=10, subsets=40, seed=1)
    assert std > 0.0 and np.isfinite(mean)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="feature dimensions"):
        kernel_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(UserError, match="at least 2"):
        kernel_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        kernel_distance(np.zeros(5), np.zeros((5, 1)))


def test_subset_sizes_are_evenly_spaced_in_one_over_n():
    sizes = subset_sizes(1000, 100, 10)
    assert sizes[0] == 100 and sizes[-1] == 1000
    np.testing.assert_allclose(np.diff(1.0 / sizes), -(0.01 - 0.001) / 9, rtol=0.02)


def test_fd_inf_is_the_intercept_of_the_fitted_line(monkeypatch):
    monkeypatch.setattr(fi_mod, "frechet_by_size", lambda a, b, sizes, *_: 0.7 + 30.0 / sizes)
    assert frechet_distance_inf(np.zeros((300, 2)), np.zeros((300, 2))) == pytest.approx(0.7)


def test_the_whole_set_point_is_the_plug_in_distance():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(60, 3)) + 1.0
    plug_in = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert frechet_by_size(a, b, np.array([40]), draws=3)[0] == pytest.approx(plug_in, rel=1e-12)


def test_fd_inf_is_nearer_the_closed_form_than_the_plug_in():
    # N(mu1, I) vs N(mu2, I): the Frechet distance is |mu1 - mu2|^2 = 1. At n = 500 in 32
    # dimensions the plug-in is about 1.1 too high; FD_inf removes nearly all of it.
    d, n = 32, 500
    shift = np.zeros(d)
    shift[0] = 1.0
    errors_plug, errors_inf = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(n, d)) + shift, rng.normal(size=(n, d))
        errors_plug.append(frechet_distance(*feature_stats(a), *feature_stats(b)) - 1.0)
        errors_inf.append(frechet_distance_inf(a, b, draws=1, seed=seed) - 1.0)
    assert np.all(np.abs(errors_inf) < np.abs(errors_plug))
    assert np.mean(errors_plug) > 0.8
    assert abs(np.mean(errors_inf)) < 0.2


def digits_sets(split_seed: int = 0, map_seed: int = 1):
    """Features of the train half, of its images blurred, and of the test half of sklearn's digits.

    The feature map is a fixed random ReLU layer, 64 pixels -> 128 features (the width of the
    quality report's classifier features), so 100 samples are fewer than the feature dimension.
    """
    images, _ = load_digits(return_X_y=True)
    images = images / 16.0
    order = np.random.default_rng(split_seed).permutation(len(images))
    train, test = images[order[: len(images) // 2]], images[order[len(images) // 2 :]]
    blurred = gaussian_filter(train.reshape(-1, 8, 8), sigma=(0, 0.4, 0.4)).reshape(-1, 64)
    weights = np.random.default_rng(map_seed).normal(size=(64, 128)) / 8.0
    center = train.mean(0)

    def features(x):
        return np.maximum((x - center) @ weights, 0.0)

    return features(train), features(blurred), features(test)


def paired_scores(train, blurred, test, n: int, draws: int = 8) -> dict[str, np.ndarray]:
    """KID and plug-in FD of `draws` random n-image train sets and of the same images blurred."""
    out = {"kid_real": [], "kid_blur": [], "fd_real": [], "fd_blur": []}
    ref = feature_stats(test)
    for s in range(draws):
        idx = np.random.default_rng(100 + s).choice(len(train), n, replace=False)
        for name, feats in (("real", train[idx]), ("blur", blurred[idx])):
            out[f"kid_{name}"].append(kernel_distance(feats, test))
            out[f"fd_{name}"].append(frechet_distance(*feature_stats(feats), *ref))
    return {k: np.array(v) for k, v in out.items()}


def test_kid_separates_blurred_digits_from_real_ones_at_100_and_500():
    # Each draw scores n train images and the same n images blurred (sigma 0.4 pixel), so the
    # blur is the only difference within a pair.
    train, blurred, test = digits_sets()
    at = {n: paired_scores(train, blurred, test, n) for n in (100, 500)}
    for n, s in at.items():
        gap = s["kid_blur"] - s["kid_real"]
        assert gap.mean() > 3 * gap.std(ddof=1) / np.sqrt(len(gap)), n
    assert np.all(at[500]["kid_blur"] > at[500]["kid_real"])
    # The plug-in Frechet distance of 100 images cannot tell them apart: the blurred set's mean
    # is within one draw-to-draw spread of the real set's (often it is the lower one) ...
    s = at[100]
    assert abs(s["fd_blur"].mean() - s["fd_real"].mean()) < s["fd_real"].std(ddof=1)
    # ... and its 1/n bias puts 100 real images far behind 500 blurred ones.
    assert at[100]["fd_real"].mean() > 3 * at[500]["fd_real"].mean()
    assert at[100]["fd_real"].mean() > 2 * at[500]["fd_blur"].mean()
