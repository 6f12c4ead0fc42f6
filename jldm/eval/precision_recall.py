"""Improved precision and recall (Kynkaanniemi et al. 2019) on feature vectors.

Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
nearest neighbour in the same set. Precision: the fraction of generated points inside the real
manifold (are samples realistic?); recall: the fraction of real points inside the generated
manifold (is the data covered?).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

_CHUNK = 1024  # rows of a distance block: 1024 x N float64, 80 MB at N = 10000


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] (float64, rounding negatives to 0)."""
    d = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point of x: [N, F] to its k-th nearest other point. -> [N]."""
    out = np.empty(len(x))
    for i in range(0, len(x), _CHUNK):
        d = _sq_dists(x[i : i + _CHUNK], x)
        # Column 0 of the sorted row is the point itself (distance 0), so index k is the k-th
        # neighbour; a duplicate of the point counts as a neighbour at distance 0.
        out[i : i + _CHUNK] = np.partition(d, k, axis=1)[:, k]
    return out


def coverage(queries: np.ndarray, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each query lies in some ball (points [M, F], squared radii [M]). -> bool [N]."""
    out = np.empty(len(queries), bool)
    for i in range(0, len(queries), _CHUNK):
        d = _sq_dists(queries[i : i + _CHUNK], points)
        out[i : i + _CHUNK] = np.any(d <= radii[None], axis=1)
    return out


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3
) -> tuple[float, float]:
    """(precision, recall) of fake_feats: [M, F] against real_feats: [N, F], k-NN manifolds.

    Both sets need more than k points. The figures depend on the set sizes (larger sets have
    tighter balls), so compare runs at equal sizes, as the paper does.
    """
    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F], got {real.shape}, {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"k={k} needs more than {k} points in each set")
    # As in frechet.py: on a busy machine spinning BLAS threads slow these products down.
    with threadpool_limits(limits=1, user_api="blas"):
        precision = coverage(fake, real, knn_radii(real, k)).mean()
        recall = coverage(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)
