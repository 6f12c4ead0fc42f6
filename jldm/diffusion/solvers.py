"""Probability-flow ODE solvers in the EDM frame (Karras et al. 2022): DPM-Solver++ 2M (Lu et al.
2022) and Heun's method with optional stochastic churn, each one lax.scan over a sigma grid.

Every process here has x_t = alpha_t x0 + std_t z. In xbar = x / alpha and sigma = std / alpha
(lambda = -log sigma is the half log-SNR) its probability-flow ODE is
d xbar / d sigma = (xbar - D(xbar, sigma)) / sigma, with D = E[x0 | x_t] read off the model (a
Frame: discrete_frame, sde_frame). A grid sigma_0 > ... > sigma_{N-1} > sigma_N = 0 has N steps;
the last lands on the clean data and is D itself, Tweedie's posterior mean.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.samplers import Known
from jldm.diffusion.schedules import Schedule, predict_x0_eps
from jldm.diffusion.sde import SDE

# D(xbar [B,...], sigma scalar) -> x0_hat [B,...]
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


class Frame(NamedTuple):
    """A process seen in the EDM frame.

    denoiser(fn) -> D for a model fn(x, c) (a prediction at integer t, or a score at time t);
    sigma_min, sigma_max: the model's range; data_var: the data variance its prior assumes
    (x_T ~ prior is xbar ~ N(0, sigma_max^2 + data_var)); levels: the sigmas [T] of a discrete
    model's timesteps, the only ones it is evaluated at (None: any sigma in the range).
    """

    denoiser: Callable[[Callable], Denoiser]
    sigma_min: float
    sigma_max: float
    data_var: float
    levels: np.ndarray | None = None


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _nearest(levels: np.ndarray, sigma: jax.Array) -> jax.Array:
    """Index of the level nearest sigma in log space. sigma: any shape -> int32, same shape."""
    d = jnp.abs(jnp.log(jnp.asarray(levels, jnp.float32)) - jnp.log(sigma)[..., None])
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def discrete_frame(schedule: Schedule, prediction: str, clip: bool) -> Frame:
    """A discrete-time model fn(x, t [B] int) -> eps, x0 or v prediction; clip: x0 to [-1, 1]."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    levels = np.sqrt((1.0 - abar) / abar)

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            tb = jnp.full((xbar.shape[0],), _nearest(levels, sigma))
            x = _bcast(jnp.sqrt(schedule.alphas_cumprod[tb]), xbar) * xbar
            x0, _ = predict_x0_eps(schedule, x, tb, fn(x, tb), prediction)
            return jnp.clip(x0, -1.0, 1.0) if clip else x0

        return d

    # x_T ~ N(0, I) is xbar ~ N(0, 1 / abar_T) = N(0, sigma_T^2 + 1).
    return Frame(denoiser, float(levels[0]), float(levels[-1]), 1.0, levels)


def sde_frame(sde: SDE, eps: float) -> Frame:
    """A score model fn(x, t [B]) -> grad_x log p_t of sde, sampled from T down to eps."""

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            tb = jnp.full((xbar.shape[0],), sde.edm_time(sigma), xbar.dtype)
            alpha, _ = sde.mean_coef_std(tb)
            return sde.denoise(fn, _bcast(alpha, xbar) * xbar, tb)

        return d

    alpha_T = float(sde.mean_coef_std(jnp.float32(sde.T))[0])
    sigma = lambda t: float(sde.edm_sigma(jnp.float32(t)))
    data_var = max((sde.prior_std / alpha_T) ** 2 - sigma(sde.T) ** 2, 0.0)
    return Frame(denoiser, sigma(eps), sigma(sde.T), data_var)


def start_sigma(frame: Frame, cap: float) -> float:
    """Where sampling starts: min(sigma_max, cap), on a discrete model's level.

    Above ~80 (Karras et al.'s sigma_max) x_sigma / sigma is pure noise for data of unit scale,
    and a grid reaching to e.g. the cosine schedule's 2e4 spends steps where nothing happens.
    """
    top = min(frame.sigma_max, cap)
    if frame.levels is None:
        return top
    return float(frame.levels[np.abs(np.log(frame.levels) - np.log(top)).argmin()])


def prior(frame: Frame, key: jax.Array, shape: tuple[int, ...], sigma: float) -> jax.Array:
    """xbar at the start sigma: N(0, sigma^2 + data_var), the model's prior at sigma_max."""
    return np.sqrt(sigma**2 + frame.data_var) * jax.random.normal(key, shape)


def max_steps(frame: Frame, start: float) -> int | None:
    """The most steps from start: a discrete model's levels up to start (None: unbounded)."""
    return None if frame.levels is None else int(np.sum(frame.levels <= start * (1 + 1e-6)))


def on_levels(frame: Frame, sigmas: np.ndarray) -> np.ndarray:
    """Descending sigmas [N] moved to distinct nearest levels of a discrete model (else kept)."""
    if frame.levels is None:
        return np.asarray(sigmas, np.float64)
    n = len(sigmas)
    idx = np.abs(np.log(frame.levels)[None] - np.log(sigmas)[:, None]).argmin(-1)
    if n > idx[0] + 1:
        raise ValueError(f"{n} steps need more than the model's levels up to {sigmas[0]:.3g}")
    # Each index within reach of distinct ones on both sides, then strictly decreasing.
    idx = np.clip(idx, np.arange(n - 1, -1, -1), idx[0] - np.arange(n))
    for i in range(1, n):
        idx[i] = min(idx[i], idx[i - 1] - 1)
    return frame.levels[idx]


def with_zero(sigmas: np.ndarray) -> jax.Array:
    """sigmas [N] followed by the clean end 0. -> [N + 1] float32."""
    return jnp.append(jnp.asarray(sigmas, jnp.float32), 0.0)


def log_snr_sigmas(frame: Frame, steps: int, start: float) -> jax.Array:
    """`steps` steps uniform in log-SNR (log sigma) from start to sigma_min, then onto 0
    (Lu et al.'s grid for low-resolution data). -> [steps + 1]."""
    logs = np.linspace(np.log(start), np.log(frame.sigma_min), steps)
    return with_zero(on_levels(frame, np.exp(logs)))


def karras_sigmas(frame: Frame, steps: int, start: float, rho: float = 7.0) -> jax.Array:
    """Karras et al.'s grid, sigma^(1/rho) linear from start to sigma_min, then 0. -> [steps+1]."""
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = frame.sigma_min ** (1 / rho), start ** (1 / rho)
    return with_zero(on_levels(frame, (hi + ramp * (lo - hi)) ** rho))


def snap(frame: Frame, sigma: jax.Array) -> jax.Array:
    """sigma moved to the nearest level of a discrete model (traceable, any shape)."""
    if frame.levels is None:
        return sigma
    return jnp.asarray(frame.levels, sigma.dtype)[_nearest(frame.levels, sigma)]


def paste(xbar: jax.Array, known: Known | None, sigma: jax.Array, key: jax.Array) -> jax.Array:
    """Inpainting: the known region x0, noised to sigma (x0 + sigma z in this frame), put back."""
    if known is None:
        return xbar
    x0, mask = known
    noised = x0 + sigma * jax.random.normal(key, xbar.shape, xbar.dtype)
    return mask * noised + (1.0 - mask) * xbar


def dpmpp_2m(
    denoise: Denoiser,
    xbar: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    known: Known | None = None,
) -> jax.Array:
    """DPM-Solver++ 2M (data prediction, multistep) over sigmas [N+1] ending at 0. -> x0 [B,...].

    Step i: xbar <- (s_{i+1}/s_i) xbar + (1 - s_{i+1}/s_i) ((1 + c) D_i - c D_{i-1}), with
    c = h_i / (2 h_{i-1}) and h_i = log(s_i / s_{i+1}); c = 0 (first order) on the first step
    and on the last, onto sigma = 0. One evaluation a step. key: the inpainting noise.
    """
    sigmas = jnp.asarray(sigmas, xbar.dtype)
    s, s_next = sigmas[:-1], sigmas[1:]
    h = jnp.log(s / jnp.where(s_next > 0, s_next, s))
    c = jnp.where(s_next[1:] > 0, h[1:] / (2.0 * jnp.where(h[:-1] > 0, h[:-1], 1.0)), 0.0)
    c = jnp.concatenate([jnp.zeros((1,), c.dtype), c])
    key = jax.random.PRNGKey(0) if key is None else key

    def body(carry, inp):
        x, d_prev = carry
        i, sigma, sigma_next, ci = inp
        d = denoise(x, sigma)
        r = sigma_next / sigma
        x = r * x + (1.0 - r) * ((1.0 + ci) * d - ci * d_prev)
        return (paste(x, known, sigma_next, jax.random.fold_in(key, i)), d), None

    steps = (jnp.arange(s.shape[0]), s, s_next, c)
    (x, _), _ = jax.lax.scan(body, (xbar, jnp.zeros_like(xbar)), steps)
    return x


def heun(
    denoise: Denoiser,
    xbar: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    known: Known | None = None,
    churn: float = 0.0,
    t_min: float = 0.0,
    t_max: float = float("inf"),
    noise: float = 1.0,
    to_level: Callable[[jax.Array], jax.Array] = lambda s: s,
) -> jax.Array:
    """Karras et al.'s Algorithm 2 over sigmas [N+1] ending at 0. -> x0 [B,...].

    Each step first raises sigma_i to s = sigma_i (1 + gamma), gamma = min(churn / N, sqrt2 - 1)
    where t_min <= sigma_i <= t_max (else 0), adding noise * sqrt(s^2 - sigma_i^2) z; then an
    Euler step to sigma_{i+1} corrected by Heun's average of slopes, except the last step onto
    0, which stays Euler (that is, D). 2N - 1 evaluations. churn = 0 is the deterministic ODE
    solver. to_level(s) -> a sigma the model takes (a discrete model's nearest level).
    """
    sigmas = jnp.asarray(sigmas, xbar.dtype)
    n = sigmas.shape[0] - 1
    s, s_next = sigmas[:-1], sigmas[1:]
    gamma = jnp.where((s >= t_min) & (s <= t_max), min(churn / n, np.sqrt(2.0) - 1.0), 0.0)
    s_hat = to_level(s * (1.0 + gamma)) if churn > 0 else s
    key = jax.random.PRNGKey(0) if key is None else key
    k_churn, k_known = jax.random.split(key)

    def step(x, inp, final):
        i, sigma, sigma_hat, sigma_next = inp
        if churn > 0:
            z = jax.random.normal(jax.random.fold_in(k_churn, i), x.shape, x.dtype)
            x = x + noise * jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0)) * z
        slope = (x - denoise(x, sigma_hat)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * slope
        if not final:
            slope_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
        return paste(x_next, known, sigma_next, jax.random.fold_in(k_known, i))

    steps = (jnp.arange(n), s, s_hat, s_next)
    x, _ = jax.lax.scan(lambda x, inp: (step(x, inp, False), None), xbar, _head(steps))
    return step(x, _last(steps), True)


def _head(tree):
    return jax.tree_util.tree_map(lambda a: a[:-1], tree)


def _last(tree):
    return jax.tree_util.tree_map(lambda a: a[-1], tree)
