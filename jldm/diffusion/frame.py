"""One frame for every objective (Karras et al. 2022): x = s(t) (x0 + sigma(t) n).

In xbar = x / s and sigma, every process here is the variance-exploding xbar = x0 + sigma n,
whatever the objective's own time variable (a discrete timestep, an SDE time, a noise level,
the flow's t). A trained network is read as a denoiser D(xbar, sigma) ~ E[x0 | xbar]; the
score of the noised data is (D - xbar) / sigma^2 and the probability-flow ODE is
d xbar / d sigma = (xbar - D) / sigma. The samplers (jldm.diffusion.solvers,
jldm.diffusion.score_samplers) consume D or that score on a descending sigma grid and nothing
else, so every objective takes every sampler.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.schedules import Schedule, predict_x0_eps
from jldm.diffusion.sde import SDE

# D(xbar [B,...], sigma scalar) -> x0_hat [B,...]
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
# score(xbar [B,...], sigma scalar) -> grad log p_sigma(xbar) [B,...]
Score = Callable[[jax.Array, jax.Array], jax.Array]
Known = tuple[jax.Array, jax.Array]  # (x0_known [B,...], mask [B,...] or broadcastable; 1 = keep)


class Frame(NamedTuple):
    """A process seen in the EDM frame.

    denoiser(fn) -> D for a model fn(x, c) in the objective's own terms (a prediction at integer
    t, a score at time t or level sigma, EDM's D, the flow's velocity); sigma_min, sigma_max:
    the model's range; data_var: the data variance its prior assumes (xbar at sigma_max ~
    N(0, sigma_max^2 + data_var)); levels: the sigmas [T] of a model trained at discrete levels
    only, the ones it is evaluated at (None: any sigma in the range); native(n, hi) -> n
    descending sigmas from hi down to sigma_min, uniform in the objective's own time variable
    (None: uniform in log sigma).
    """

    denoiser: Callable[[Callable], Denoiser]
    sigma_min: float
    sigma_max: float
    data_var: float
    levels: np.ndarray | None = None
    native: Callable[[int, float], np.ndarray] | None = None


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """v [B] (or scalar) shaped to broadcast against x [B,...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def score_of(denoise: Denoiser) -> Score:
    """The score of the noised data, (D(xbar, sigma) - xbar) / sigma^2 (Tweedie)."""
    return lambda x, sigma: (denoise(x, sigma) - x) / jnp.square(sigma)


def _nearest(levels: np.ndarray, sigma: jax.Array) -> jax.Array:
    """Index of the level nearest sigma in log space. sigma: any shape -> int32, same shape."""
    d = jnp.abs(jnp.log(jnp.asarray(levels, jnp.float32)) - jnp.log(sigma)[..., None])
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def level_index(levels: np.ndarray, sigmas) -> np.ndarray:
    """Index of the level nearest each sigma in log space, on the host (grids are built before
    tracing). sigmas: float or [N] -> int, same shape."""
    return np.abs(np.log(levels) - np.log(np.asarray(sigmas))[..., None]).argmin(-1)


def discrete_frame(schedule: Schedule, prediction: str, clip: bool) -> Frame:
    """A discrete-time model fn(x, t [B] int) -> eps, x0 or v prediction; clip: x0 to [-1, 1].

    Its native grid is DDIM's: timesteps evenly spaced from T-1 down to 0.
    """
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    levels = np.sqrt((1.0 - abar) / abar)

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            tb = jnp.full((xbar.shape[0],), _nearest(levels, sigma))
            x = bcast(jnp.sqrt(schedule.alphas_cumprod[tb]), xbar) * xbar
            x0, _ = predict_x0_eps(schedule, x, tb, fn(x, tb), prediction)
            return jnp.clip(x0, -1.0, 1.0) if clip else x0

        return d

    def native(n: int, hi: float) -> np.ndarray:
        return levels[np.linspace(level_index(levels, hi), 0, n).round().astype(np.int64)]

    # x_T ~ N(0, I) is xbar ~ N(0, 1 / abar_T) = N(0, sigma_T^2 + 1).
    return Frame(denoiser, float(levels[0]), float(levels[-1]), 1.0, levels, native)


def sde_frame(sde: SDE, eps: float) -> Frame:
    """A score model fn(x, t [B]) -> grad_x log p_t of sde, over t in [eps, T]; its native grid
    is uniform in t."""

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            tb = jnp.full((xbar.shape[0],), sde.edm_time(sigma), xbar.dtype)
            alpha, _ = sde.mean_coef_std(tb)
            return sde.denoise(fn, bcast(alpha, xbar) * xbar, tb)

        return d

    alpha_T = float(sde.mean_coef_std(jnp.float32(sde.T))[0])

    def sigma(t):
        with jax.ensure_compile_time_eval():
            return np.asarray(sde.edm_sigma(jnp.asarray(t, jnp.float32)), np.float64)

    def native(n: int, hi: float) -> np.ndarray:
        with jax.ensure_compile_time_eval():
            top = min(float(sde.edm_time(jnp.float32(hi))), sde.T)
        return sigma(np.linspace(top, eps, n))

    data_var = max((sde.prior_std / alpha_T) ** 2 - float(sigma(sde.T)) ** 2, 0.0)
    return Frame(denoiser, float(sigma(eps)), float(sigma(sde.T)), data_var, None, native)


def ncsn_frame(sigma_min: float, sigma_max: float) -> Frame:
    """A score model fn(x, sigma [B]) -> grad_x log p_sigma of x = x0 + sigma n (NCSN, alpha = 1)
    trained on a geometric ladder in [sigma_min, sigma_max]; its native grid is geometric, and
    it takes any sigma of the range (its noise input is continuous). D = x + sigma^2 s. The
    prior at sigma_max is N(0, sigma_max^2), the ladder's assumption that sigma_max spans the
    data."""

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            c = jnp.full((xbar.shape[0],), sigma, xbar.dtype)
            return xbar + jnp.square(sigma) * fn(xbar, c)

        return d

    native = lambda n, hi: np.geomspace(hi, sigma_min, n)
    return Frame(denoiser, float(sigma_min), float(sigma_max), 0.0, None, native)


def native_sigmas(frame: Frame, n: int, start: float) -> np.ndarray:
    """The objective's own grid of n sigmas from start (geometric where it has none), on its
    levels."""
    if frame.native is None:
        return on_levels(frame, np.geomspace(start, frame.sigma_min, n))
    return on_levels(frame, frame.native(n, start))


def start_sigma(frame: Frame, cap: float) -> float:
    """Where a Karras or log-SNR grid starts: min(sigma_max, cap), on a discrete model's level.

    Above ~80 (Karras et al.'s sigma_max) x_sigma / sigma is pure noise for data of unit scale,
    and a grid reaching to e.g. the cosine schedule's 2e4 spends steps where nothing happens.
    """
    top = min(frame.sigma_max, cap)
    if frame.levels is None:
        return top
    return float(frame.levels[level_index(frame.levels, top)])


def prior(
    frame: Frame, key: jax.Array, shape: tuple[int, ...], sigma: float, z: jax.Array | None = None
) -> jax.Array:
    """xbar at sigma: N(0, sigma^2 + data_var), the model's prior there; z: its unit-normal
    draw when given (e.g. a discrete model's x_T), else drawn from key."""
    z = jax.random.normal(key, shape) if z is None else z
    return np.sqrt(sigma**2 + frame.data_var) * z


def max_steps(frame: Frame, start: float) -> int | None:
    """The most grid points from start: a discrete model's levels up to it (None: unbounded)."""
    return None if frame.levels is None else int(np.sum(frame.levels <= start * (1 + 1e-6)))


def on_levels(frame: Frame, sigmas: np.ndarray) -> np.ndarray:
    """Descending sigmas [N] moved to distinct nearest levels of a discrete model (else kept)."""
    if frame.levels is None:
        return np.asarray(sigmas, np.float64)
    n = len(sigmas)
    idx = level_index(frame.levels, sigmas)
    if n > idx[0] + 1:
        raise ValueError(f"{n} steps need more than the model's levels up to {sigmas[0]:.3g}")
    # Each index within reach of distinct ones on both sides, then strictly decreasing.
    idx = np.clip(idx, np.arange(n - 1, -1, -1), idx[0] - np.arange(n))
    for i in range(1, n):
        idx[i] = min(idx[i], idx[i - 1] - 1)
    return frame.levels[idx]


def with_zero(sigmas: np.ndarray) -> np.ndarray:
    """sigmas [N] followed by the clean end 0. -> [N + 1] float32 (a constant, not traced)."""
    return np.append(np.asarray(sigmas, np.float32), np.float32(0.0))


def log_snr_sigmas(frame: Frame, steps: int, start: float) -> np.ndarray:
    """`steps` sigmas uniform in log-SNR (log sigma) from start to sigma_min, then 0 (Lu et al.'s
    grid for low-resolution data). -> [steps + 1]."""
    return with_zero(on_levels(frame, np.geomspace(start, frame.sigma_min, steps)))


def karras_sigmas(frame: Frame, steps: int, start: float, rho: float = 7.0) -> np.ndarray:
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
    """Inpainting: the known region x0, noised to sigma (x0 + sigma z), put back into xbar.

    Every step then denoises the unknown region in the context of a correctly noised known one,
    and at sigma = 0 the known pixels are exact.
    """
    if known is None:
        return xbar
    x0, mask = known
    noised = x0 + sigma * jax.random.normal(key, xbar.shape, xbar.dtype)
    return mask * noised + (1.0 - mask) * xbar


def scan_grid(
    step: Callable,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None,
    known: Known | None,
    carry=None,
):
    """(x, carry) over the grid sigmas [N+1] by (x, carry) = step(x, carry, i, sigma_i,
    sigma_i+1, key_i) in one lax.scan, the known pixels pasted back after each step (noised to
    sigma_i+1). key splits into the steps' and the pasting's keys; key_i folds i into the first.
    -> (x, carry)."""
    sigmas = jnp.asarray(sigmas, x.dtype)
    key = jax.random.PRNGKey(0) if key is None else key
    k_step, k_known = jax.random.split(key)

    def body(state, inp):
        x, c = state
        i, sigma, sigma_next = inp
        x, c = step(x, c, i, sigma, sigma_next, jax.random.fold_in(k_step, i))
        return (paste(x, known, sigma_next, jax.random.fold_in(k_known, i)), c), None

    steps = (jnp.arange(sigmas.shape[0] - 1), sigmas[:-1], sigmas[1:])
    (x, carry), _ = jax.lax.scan(body, (x, carry), steps)
    return x, carry
