"""Frechet distance between Gaussians fitted to feature sets (the quantity behind FID)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from jldm.errors import UserError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] (float64) of features: [N, F]."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, F], got shape {x.shape}")
    if x.shape[0] < 2:
        raise UserError(
            f"a covariance needs at least 2 samples, got {x.shape[0]}: generate more samples"
        )
    with threadpool_limits(limits=1, user_api="blas"):
        sigma = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    return x.mean(axis=0), sigma


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD a: [F, F] (rounding-level negatives as 0)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) of PSD sigma1, sigma2: [F, F], singular ones included.

    It is the sum of the singular values of sigma1^(1/2) sigma2^(1/2) (their squares are the
    eigenvalues of sigma2^(1/2) sigma1 sigma2^(1/2), which are those of sigma1 sigma2), so no
    general matrix square root and no ridge is needed when there are fewer samples than features.
    """
    # Matrices of a few hundred rows gain nothing from BLAS threads, and on a busy machine
    # spinning OpenBLAS threads make these decompositions ~100x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        root = _psd_sqrt(sigma1) @ _psd_sqrt(sigma2)
        return float(np.linalg.svd(root, compute_uv=False).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
) -> float:
    """Frechet distance between N(mu1: [F], sigma1: [F, F]) and N(mu2: [F], sigma2: [F, F]).

    d = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), computed in float64.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    diff = mu1 - mu2
    distance = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    # Identical statistics give a rounding-level negative value, which is zero.
    return max(float(distance), 0.0)
