"""Toy densities with exact scores: isotropic Gaussian mixtures in D dimensions and a 2-D ring.

Convolving a mixture with N(0, sigma^2 I) adds sigma^2 to every component variance, so the
density, score and samples of the noised data p_sigma are exact too (pass sigma).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class GaussianMixture(NamedTuple):
    """sum_k w_k N(m_k, std_k^2 I). means: [K,D], stds: [K], weights: [K] summing to 1."""

    means: jax.Array
    stds: jax.Array
    weights: jax.Array

    def _components(self, x: jax.Array, sigma: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(log w_k N(x; m_k, var_k) [B,K], x - m_k [B,K,D], var [B or 1, K])."""
        s2 = jnp.square(jnp.asarray(sigma, x.dtype))[..., None]
        var = jnp.square(self.stds) + s2
        diff = x[:, None, :] - self.means[None]
        dim = x.shape[-1]
        sq = jnp.sum(jnp.square(diff), axis=-1)
        logn = -0.5 * (sq / var + dim * jnp.log(2 * math.pi * var))
        return logn + jnp.log(self.weights), diff, var

    def log_prob(self, x: jax.Array, sigma: ArrayLike = 0.0) -> jax.Array:
        """log p_sigma(x); sigma: scalar or [B]. x: [B,D] -> [B]."""
        logc, _, _ = self._components(x, sigma)
        return jax.nn.logsumexp(logc, axis=-1)

    def score(self, x: jax.Array, sigma: ArrayLike = 0.0) -> jax.Array:
        """grad_x log p_sigma(x) = sum_k r_k(x) (m_k - x) / var_k, in closed form. -> [B,D]."""
        logc, diff, var = self._components(x, sigma)
        resp = jax.nn.softmax(logc, axis=-1)
        return -jnp.sum((resp / var)[..., None] * diff, axis=1)

    def sample(self, key: jax.Array, n: int, sigma: float = 0.0) -> jax.Array:
        """n draws from p_sigma. -> [n, D]."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        std = jnp.sqrt(jnp.square(self.stds[comp]) + sigma**2)
        noise = jax.random.normal(k_noise, (n, self.means.shape[1]))
        return self.means[comp] + std[:, None] * noise

    def nearest_mode(self, x: jax.Array) -> jax.Array:
        """Index of the closest mean. x: [B,D] -> [B] int."""
        d = jnp.sum(jnp.square(x[:, None, :] - self.means[None]), axis=-1)
        return jnp.argmin(d, axis=-1)


def gaussian_mixture(
    means: ArrayLike, stds: ArrayLike, weights: ArrayLike | None = None
) -> GaussianMixture:
    """Build a mixture; stds a scalar or [K]; weights default uniform, normalised to sum 1."""
    means = jnp.asarray(means, jnp.float32)
    k = means.shape[0]
    stds = jnp.broadcast_to(jnp.asarray(stds, jnp.float32), (k,))
    w = jnp.ones((k,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    return GaussianMixture(means, stds, w / jnp.sum(w))


def ring(
    n_modes: int = 8, radius: float = 4.0, std: float = 0.2, weights: ArrayLike | None = None
) -> GaussianMixture:
    """n_modes Gaussians of one std evenly spaced on a circle of radius r, the first at (r, 0)."""
    angles = 2 * math.pi * jnp.arange(n_modes) / n_modes
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return gaussian_mixture(means, std, weights)
