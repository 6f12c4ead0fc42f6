"""Frechet distance between Gaussians fitted to feature sets (the quantity behind FID)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
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


def _sqrtm_real(a: np.ndarray) -> np.ndarray | None:
    """Real square root of a: [F, F], or None when sqrtm fails or is materially complex."""
    # Singular products are expected (fewer samples than features); failure is checked below.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(a)
    if not np.all(np.isfinite(root)):
        return None
    if np.iscomplexobj(root):
        # sigma1 @ sigma2 has real non-negative eigenvalues in exact arithmetic, so imaginary parts
        # are rounding noise unless they are comparable to the real parts.
        scale = max(1.0, float(np.max(np.abs(root.real))))
        if np.max(np.abs(root.imag)) > 1e-6 * scale:
            return None
        root = root.real
    return root


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
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

    # Matrices of a few hundred rows gain nothing from BLAS threads, and on a busy machine
    # spinning OpenBLAS threads make sqrtm ~100x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        covmean = _sqrtm_real(sigma1 @ sigma2)
        if covmean is None:
            # Covariances from fewer samples than features are singular; a small ridge makes the
            # product diagonalisable while moving the distance by O(eps * F).
            ridge = eps * np.eye(f)
            covmean = _sqrtm_real((sigma1 + ridge) @ (sigma2 + ridge))
    if covmean is None:
        raise ValueError("matrix square root of sigma1 @ sigma2 failed even with a ridge")

    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    # Identical statistics give a rounding-level negative value, which is zero.
    return max(float(distance), 0.0)
