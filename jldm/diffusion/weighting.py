"""Loss weightings over noise levels for processes x_t = alpha x0 + sigma z.

An objective's plain loss regresses a target (eps, x0, v, the flow velocity, or EDM's
preconditioned one); written as an error of the implied x0 estimate, |target_hat - target|^2 =
w |x0_hat - x0|^2 with a weight w fixed by the target: SNR = alpha^2 / sigma^2 for eps, 1 for
x0, SNR + 1 for v (alpha^2 + sigma^2 = 1), 1 / sigma^2 for the velocity z - x0 of the linear
path (alpha + sigma = 1), and EDM's lambda = 1 / sigma^2 + 1 / sigma_data^2 (alpha = 1).

- min_snr (Hang et al. 2023, "Efficient diffusion training via Min-SNR weighting strategy"):
  reweigh every level so that the x0 weight becomes min(SNR, gamma); on the plain loss that is
  the factor min(SNR, gamma) / w: min(SNR, gamma) / SNR on eps, min(SNR, gamma) on x0,
  min(SNR, gamma) / (SNR + 1) on v.
- likelihood (Song, Durkan, Murray and Ermon 2021, "Maximum likelihood training of score-based
  diffusion models"): the DSM weight lambda(t) = g(t)^2 of a continuous-time SDE, for which
  0.5 int_eps^T g^2 E|s - grad log p_0t|^2 dt is the negative ELBO of x_eps less terms free of
  the model. Against the default weight std(t)^2 that is a factor g^2 / std^2, and drawing t
  with density proportional to g^2 / std^2 (by its inverse CDF, closed form for VE, VP and
  sub-VP) makes every sample's weight the same constant Z = int_eps^T g^2 / std^2 dt.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE

WEIGHTINGS = ("default", "min_snr", "likelihood")
TARGETS = ("eps", "x0", "v", "velocity", "edm")


def scaled_x0_weight(
    target: str, alpha: jax.Array, sigma: jax.Array, sigma_data: float = 1.0
) -> jax.Array:
    """sigma^2 w: the x0 weight w of target's plain loss times sigma^2 (finite at sigma = 0).

    alpha, sigma: [B] -> [B]. "edm" is x = x0 + sigma z (alpha = 1) with EDM's lambda.
    """
    a2, s2 = jnp.square(alpha), jnp.square(sigma)
    if target == "eps":
        return a2
    if target == "x0":
        return s2
    if target == "v":
        return a2 + s2
    if target == "velocity":
        return jnp.square(alpha + sigma)
    if target == "edm":
        return 1.0 + s2 / sigma_data**2
    raise ValueError(f"unknown target {target!r}: use {', '.join(TARGETS)}")


def min_snr_factor(
    target: str, alpha: jax.Array, sigma: jax.Array, gamma: float, sigma_data: float = 1.0
) -> jax.Array:
    """The factor on target's plain loss that makes its x0 weight min(SNR, gamma). [B] -> [B].

    min(SNR, gamma) / w = min(alpha^2, gamma sigma^2) / (sigma^2 w).
    """
    top = jnp.minimum(jnp.square(alpha), gamma * jnp.square(sigma))
    return top / scaled_x0_weight(target, alpha, sigma, sigma_data)


def likelihood_weight(sde: SDE, t: jax.Array) -> jax.Array:
    """g(t)^2 / std(t)^2: the likelihood weight g^2 against the default std^2. t: [B] -> [B]."""
    _, std = sde.mean_coef_std(t)
    return jnp.square(sde.diffusion(t)) / jnp.square(std)


def _log_expm1(u, xp):
    """log(exp(u) - 1) for u > 0, stable for small and large u."""
    return u + xp.log(-xp.expm1(-u))


def _integrated_beta(sde: VPSDE, t, xp):
    """B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2 (alpha^2 = exp(-B))."""
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * xp.square(t)


def _antiderivative(sde: SDE, t, xp):
    """F(t) with dF/dt = g^2 / std^2, in numpy (xp=np, float64) or jax (xp=jnp).

    VE: u = 2 t log(smax/smin), g^2 / std^2 = 2 log(smax/smin) e^u / (e^u - 1), F = log(e^u - 1).
    VP: g^2 / std^2 = beta / (1 - e^-B), F = log(e^B - 1). Sub-VP: beta (1 + e^-B) / (1 - e^-B),
    F = 2 log(e^B - 1) - B.
    """
    if isinstance(sde, VESDE):
        return _log_expm1(2.0 * t * math.log(sde.sigma_max / sde.sigma_min), xp)
    if isinstance(sde, SubVPSDE):
        b = _integrated_beta(sde, t, xp)
        return 2.0 * _log_expm1(b, xp) - b
    if isinstance(sde, VPSDE):
        return _log_expm1(_integrated_beta(sde, t, xp), xp)
    raise ValueError(f"no likelihood weighting for {type(sde).__name__}")


def _inverse(sde: SDE, y: jax.Array) -> jax.Array:
    """The time t with _antiderivative(t) = y. [n] -> [n]."""
    if isinstance(sde, VESDE):
        return jnp.logaddexp(0.0, y) / (2.0 * math.log(sde.sigma_max / sde.sigma_min))
    if isinstance(sde, SubVPSDE):
        b = 2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * y))
    else:
        b = jnp.logaddexp(0.0, y)
    # B = beta_min t + d t^2 / 2 solved for t, in the form stable for d = 0.
    lo, d = sde.beta_min, sde.beta_max - sde.beta_min
    return 2.0 * b / (lo + jnp.sqrt(lo**2 + 2.0 * d * b))


def _ends(sde: SDE, eps_t: float) -> tuple[float, float]:
    lo, hi = (float(_antiderivative(sde, np.float64(t), np)) for t in (eps_t, sde.T))
    return lo, hi


def likelihood_norm(sde: SDE, eps_t: float) -> float:
    """Z = int_eps_t^T g^2 / std^2 dt, the constant weight of importance-sampled times."""
    lo, hi = _ends(sde, eps_t)
    return hi - lo


def likelihood_cdf(sde: SDE, t: np.ndarray, eps_t: float) -> np.ndarray:
    """CDF of the importance density g^2 / (Z std^2) on [eps_t, T], in float64. [n] -> [n]."""
    lo, hi = _ends(sde, eps_t)
    return (_antiderivative(sde, np.asarray(t, np.float64), np) - lo) / (hi - lo)


def likelihood_times(sde: SDE, key: jax.Array, n: int, eps_t: float) -> jax.Array:
    """t ~ g^2 / (Z std^2) on [eps_t, T] by the inverse CDF. -> [n] float32."""
    lo, hi = _ends(sde, eps_t)
    y = lo + (hi - lo) * jax.random.uniform(key, (n,))
    return jnp.clip(_inverse(sde, y), eps_t, sde.T)
