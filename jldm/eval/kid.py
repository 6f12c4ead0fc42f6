"""Kernel distance (KID): the unbiased squared MMD with a cubic polynomial kernel.

Binkowski et al. 2018, "Demystifying MMD GANs": with k(x, y) = (x . y / d + 1)^3 on features of
dimension d,

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m),

an unbiased estimate of the population MMD^2 at every n and m (so it is about 0, and may be
negative, for two samples of one distribution), unlike the plug-in Frechet distance, whose
upward bias shrinks only as 1/n.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from jldm.errors import UserError

_BLOCK = 4096  # rows of a kernel block: 4096 x 4096 float64, 128 MB (two live at once)


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, F], got shape {x.shape}")
    if x.shape[0] < 2:
        raise UserError(
            f"the kernel distance needs at least 2 samples per set, got {x.shape[0]}: "
            "generate more samples"
        )
    return x


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a_i, b_j) = (a_i . b_j / F + 1)^3 for a: [N, F], b: [M, F]. -> [N, M] float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # In place and by multiplication: on a 4096^2 block, ** 3 takes longer than the product.
    k = a @ b.T
    k /= a.shape[1]
    k += 1.0
    cube = k * k
    cube *= k
    return cube


def _kernel_sum(a: np.ndarray, b: np.ndarray | None) -> float:
    """Sum of all entries of k(a, b): [N, M]; b None means b = a, with only off-diagonal entries.

    Blocks bound the memory at _BLOCK^2 entries; for b = a only blocks on or above the diagonal
    are formed (the kernel matrix is symmetric) and the diagonal entries are left out.
    """
    total = 0.0
    if b is None:
        for i in range(0, len(a), _BLOCK):
            ai = a[i : i + _BLOCK]
            for j in range(i, len(a), _BLOCK):
                k = polynomial_kernel(ai, a[j : j + _BLOCK])
                if j == i:
                    total += k.sum() - np.trace(k)
                else:
                    total += 2.0 * k.sum()
        return total
    for i in range(0, len(a), _BLOCK):
        ai = a[i : i + _BLOCK]
        for j in range(0, len(b), _BLOCK):
            total += polynomial_kernel(ai, b[j : j + _BLOCK]).sum()
    return total


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    kxx = _kernel_sum(x, None) / (n * (n - 1))
    kyy = _kernel_sum(y, None) / (m * (m - 1))
    kxy = _kernel_sum(x, y) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Unbiased MMD^2 (KID) between feats_a: [N, F] and feats_b: [M, F], cubic polynomial kernel.

    Binkowski et al. 2018, "Demystifying MMD GANs". Float64; about 0 (and possibly negative) for
    two samples of one distribution. Memory stays bounded for any N, M (blocks of 4096 rows).
    """
    x = _as_features(feats_a, "feats_a")
    y = _as_features(feats_b, "feats_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape} and {y.shape}")
    # As in frechet.py: on a busy machine spinning BLAS threads slow these products down.
    with threadpool_limits(limits=1, user_api="blas"):
        return _mmd2_unbiased(x, y)


def kernel_distance_subsets(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the KID of `subsets` random pairs of subsets of feats_a: [N, F], feats_b.

    As Binkowski et al. 2018 report KID: each subset draws min(subset_size, N) rows of feats_a and
    min(subset_size, M) rows of feats_b without replacement; the std (ddof=1) is the spread over
    subsets, a measure of how much one subset-sized evaluation varies.
    """
    x = _as_features(feats_a, "feats_a")
    y = _as_features(feats_b, "feats_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape} and {y.shape}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    rng = np.random.default_rng(seed)
    na, nb = min(subset_size, len(x)), min(subset_size, len(y))
    values = np.empty(subsets)
    with threadpool_limits(limits=1, user_api="blas"):
        for s in range(subsets):
            xa = x[rng.choice(len(x), na, replace=False)]
            yb = y[rng.choice(len(y), nb, replace=False)]
            values[s] = _mmd2_unbiased(xa, yb)
    std = float(values.std(ddof=1)) if subsets > 1 else 0.0
    return float(values.mean()), std
