"""Metrics of a learned score against an exactly known Gaussian mixture (the toy densities)."""

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion import score_losses
from jldm.diffusion.toy import GaussianMixture

# Noise levels: conditions c [L] and the noised data x_c = alpha x0 + std z, alpha and std [L].
Levels = tuple[jax.Array, jax.Array, jax.Array]


def noised(mix: GaussianMixture, alpha: jax.Array, std: jax.Array) -> GaussianMixture:
    """Density of alpha x0 + std z, x0 ~ mix: means alpha m_k, variances alpha^2 s_k^2 + std^2."""
    stds = jnp.sqrt(jnp.square(alpha * mix.stds) + jnp.square(std))
    return GaussianMixture(alpha * mix.means, stds, mix.weights)


def score_error(score_fn, mix: GaussianMixture, levels: Levels, key: jax.Array, n: int):
    """Relative MSE of score_fn(x [n,2], c [n]) on n fresh draws per level. -> (total, [L]).

    total = sum_l w_l E|s_theta - s|^2 / sum_l w_l E|s|^2 with w_l = std_l^2, the objectives' own
    weighting (one level: the plain ratio). Unweighted, the levels with std -> 0 would dominate:
    their scores are large and no objective's loss resolves them (its weight vanishes there).
    """
    cs, alphas, stds = levels

    def one(i):
        m = noised(mix, alphas[i], stds[i])
        x = m.sample(jax.random.fold_in(key, i), n)
        target = m.score(x)
        err = score_fn(x, jnp.full((n,), cs[i])) - target
        return jnp.mean(score_losses.sq_norm(err)), jnp.mean(score_losses.sq_norm(target))

    err, norm = jax.lax.map(one, jnp.arange(cs.shape[0]))
    w = jnp.square(stds) if cs.shape[0] > 1 else jnp.ones_like(stds)
    return jnp.sum(w * err) / jnp.sum(w * norm), err / norm


def mode_report(mix: GaussianMixture, x: np.ndarray) -> dict:
    """Nearest-mode weights [K], their largest gap to the true weights, and the mean distance."""
    x = np.asarray(x)
    finite = np.all(np.isfinite(x), axis=-1)
    x = x[finite]
    means, weights = np.asarray(mix.means), np.asarray(mix.weights)
    nonfinite = int((~finite).sum())
    if len(x) == 0:
        nan = float("nan")
        return {"weights": np.full_like(weights, nan), "weight_error": nan, "mean_dist": nan,
                "nonfinite": nonfinite}  # fmt: skip
    d = np.linalg.norm(x[:, None, :] - means[None], axis=-1)
    frac = np.bincount(d.argmin(-1), minlength=len(weights)) / len(x)
    return {
        "weights": frac,
        "weight_error": float(np.abs(frac - weights).max()),
        "mean_dist": float(d.min(-1).mean()),
        "nonfinite": nonfinite,
    }


def exact_draws(mix: GaussianMixture, n: int, seed: int) -> np.ndarray:
    """n draws from mix in numpy: a reference that costs no XLA compilations. -> [n, D]."""
    means, stds, weights = (np.asarray(v, np.float64) for v in mix)
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), n, p=weights / weights.sum())
    return means[comp] + stds[comp, None] * rng.normal(size=(n, means.shape[1]))
