"""FD_inf: the Frechet distance extrapolated to infinitely many samples.

Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them": the
plug-in Frechet distance of n samples is biased upward by about slope / n, so it is computed on
random subsets of several sizes n_i, FD(n_i) = FD_inf + slope / n_i is fitted by least squares,
and the intercept FD_inf is the estimate at n = infinity.
"""

from __future__ import annotations

import numpy as np

from jldm.eval.frechet import feature_stats, frechet_distance


def subset_sizes(n: int, min_size: int, points: int) -> np.ndarray:
    """`points` subset sizes from min_size to n, evenly spaced in 1/size (rounded). -> int [P]."""
    if not 2 <= min_size <= n:
        raise ValueError(f"need 2 <= min_size <= n, got min_size={min_size}, n={n}")
    if points < 2:
        raise ValueError(f"the fit needs at least 2 sizes, got points={points}")
    return np.round(1.0 / np.linspace(1.0 / min_size, 1.0 / n, points)).astype(int)


def frechet_by_size(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    sizes: np.ndarray,
    draws: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Plug-in Frechet distance on random subsets of feats_a: [N, F] and feats_b: [M, F]. -> [P]

    Entry i is the mean over `draws` draws of the distance between sizes[i] rows of feats_a and
    round(sizes[i] * M / N) rows of feats_b (both without replacement): both sets shrink in the
    same proportion, so the bias of both is proportional to 1 / sizes[i].
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    n, m = len(a), len(b)
    rng = np.random.default_rng(seed)
    out = np.empty(len(sizes))
    for i, size in enumerate(sizes):
        size_b = max(2, min(m, round(size * m / n)))
        if size >= n and size_b >= m:  # the whole sets: every draw is the same
            out[i] = frechet_distance(*feature_stats(a), *feature_stats(b))
            continue
        total = 0.0
        for _ in range(draws):
            ia = rng.choice(n, size, replace=False)
            ib = rng.choice(m, size_b, replace=False) if size_b < m else np.arange(m)
            total += frechet_distance(*feature_stats(a[ia]), *feature_stats(b[ib]))
        out[i] = total / draws
    return out


def frechet_distance_inf(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    points: int = 15,
    min_size: int | None = None,
    draws: int = 4,
    seed: int = 0,
) -> float:
    """FD_inf between feats_a: [N, F] and feats_b: [M, F] (Chong & Forsyth 2020).

    Fits FD(n) = FD_inf + slope / n by least squares to the plug-in distances of `points`
    subset sizes evenly spaced in 1/n from min_size (default N // 2) to N, each the mean of
    `draws` random subsets, and returns FD_inf. feats_b is subsampled in the same proportion as
    feats_a. The 1/n law holds when the subsets are several times larger than F; with N at or
    below a few times F the extrapolation misses by a lot (kernel_distance has no such limit).
    The intercept may be slightly negative when the two distributions are equal.
    """
    n = len(feats_a)
    sizes = subset_sizes(n, n // 2 if min_size is None else min_size, points)
    if len(np.unique(sizes)) < 2:
        raise ValueError(f"the fit needs two distinct subset sizes, got {sizes.tolist()}")
    fds = frechet_by_size(feats_a, feats_b, sizes, draws, seed)
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], axis=1)
    (intercept, _slope), *_ = np.linalg.lstsq(design, fds, rcond=None)
    return float(intercept)
