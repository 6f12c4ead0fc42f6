"""The discrete-time variational bound of DDPM (Ho et al. 2020, eq. 5), per image, in nats.

-log p(x0) <= L_T + sum_{t=2}^T L_{t-1} + L_0 for 8-bit data x0 on [lo, hi]:
- L_T = KL(q(x_T | x0) || N(0, I)), no network;
- L_{t-1} = E_q(x_t | x0) KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), p = N(mu~(x_t, x0_hat),
  sigma_t^2 I): the Gaussian posterior's mean with x0 replaced by the network's estimate (its
  eps, x0 or v prediction converted), so mu - mu_hat = c_t (x0 - x0_hat), c_t = beta_t
  sqrt(abar_{t-1}) / (1 - abar_t);
- L_0 = -log p(x0 | x1): the Gaussian N(x0_hat(x1), sigma_1^2) integrated over each pixel's bin
  (half a level either side, the extreme levels' bins open to -inf / +inf).
sigma_t^2 is fixed: "small" is beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), the true
posterior variance (each KL is then c_t^2 |x0 - x0_hat|^2 / 2 beta~_t), with beta~_2 for the
decoder since beta~_1 = 0; "large" is beta_t. Either gives a bound (Ho et al. found the two
alike). clip: x0_hat clipped to [lo, hi], as the ancestral sampler does, which defines the
model sampled; an eps-prediction's x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
otherwise turns a small error at t = T (abar_T = 2.4e-9 for the cosine schedule at T = 1000)
into a KL of tens of bits per dimension. Schedule index i = 0..T-1 is step t = i + 1, so term
index i is L_i (the decoder at i = 0). Each KL is estimated from one draw of x_t, made for
term i of an image from fold_in(its key, i): the full sum is an unbiased estimate of the
bound, and so is the one of K evaluations: the decoder L_0 (usually the largest term) always,
and one index drawn from each of K - 1 strata of equal width over 1..T-1, weighted by its
stratum's width.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.schedules import Schedule, predict_x0_eps, q_sample

# model_fn(x_t [B,...], t [B] int indices) -> the network's eps, x0 or v prediction [B,...]
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
VARIANCES = ("small", "large")


def _per_image(v: jax.Array) -> jax.Array:
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def pixels_to_data(pixels: jax.Array, levels: int = 256, lo: float = -1.0, hi: float = 1.0):
    """Integer pixels 0..levels-1 -> float32 values on [lo, hi], level k at lo + (hi - lo) k /
    (levels - 1) (the pixel data DDPM trains on). -> [same]."""
    return lo + (hi - lo) * pixels.astype(jnp.float32) / (levels - 1)


def posterior_variance(schedule: Schedule) -> jax.Array:
    """beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) per index (0 at t = 1). -> [T]."""
    abar = schedule.alphas_cumprod
    abar_prev = jnp.concatenate([jnp.ones((1,), abar.dtype), abar[:-1]])
    return schedule.betas * (1.0 - abar_prev) / (1.0 - abar)


def fixed_variance(schedule: Schedule, variance: str = "small") -> jax.Array:
    """The reverse process's fixed sigma_t^2 per index: beta~_t ("small", beta~_2 at t = 1) or
    beta_t ("large"). -> [T]."""
    if variance == "large":
        return schedule.betas
    if variance != "small":
        raise ValueError(f"unknown variance {variance!r}: use small or large")
    tilde = posterior_variance(schedule)
    return tilde.at[0].set(tilde[1] if tilde.shape[0] > 1 else schedule.betas[0])


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """L_T = KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I)) in nats. x0: [B,...] -> [B]."""
    abar = schedule.alphas_cumprod[-1]
    return 0.5 * _per_image(abar * jnp.square(x0) - abar - jnp.log1p(-abar))


def _log_ndtr_diff(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (mirrored to the lower one)."""
    flip = a + b > 0
    a, b = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    lb = jax.scipy.special.log_ndtr(b)
    return lb + jnp.log(-jnp.expm1(jax.scipy.special.log_ndtr(a) - lb))


def discretized_gaussian_logp(
    x: jax.Array,
    mean: jax.Array,
    std: jax.Array,
    levels: int = 256,
    lo: float = -1.0,
    hi: float = 1.0,
) -> jax.Array:
    """log P(the pixel bin of x) under N(mean, std^2), elementwise. x on the levels' grid.

    The bin of level k spans half a level either side of lo + (hi - lo) k / (levels - 1); the
    bins of levels 0 and levels - 1 extend to -inf and +inf, so the levels' masses sum to 1.
    """
    half = 0.5 * (hi - lo) / (levels - 1)
    a = jnp.where(x <= lo + 0.5 * half, -jnp.inf, (x - half - mean) / std)
    b = jnp.where(x >= hi - 0.5 * half, jnp.inf, (x + half - mean) / std)
    return _log_ndtr_diff(a, b)


def vlb_term(
    model_fn: ModelFn,
    schedule: Schedule,
    prediction: str,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    variance: str = "small",
    levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    clip: bool = True,
) -> jax.Array:
    """L_t of each image (nats) from the draw x_t = q_sample(x0, t, noise). t: [B] -> [B].

    Index t >= 1 gives the posterior KL L_t (diffusion step t + 1); t = 0 the decoder L_0.
    """
    x_t = q_sample(schedule, x0, t, noise)
    x0_hat, _ = predict_x0_eps(schedule, x_t, t, model_fn(x_t, t), prediction)
    if clip:
        x0_hat = jnp.clip(x0_hat, *data_range)
    var_p = fixed_variance(schedule, variance)
    abar = schedule.alphas_cumprod
    first = t == 0
    prev = jnp.where(first, 1.0, abar[jnp.maximum(t - 1, 0)])
    coef = schedule.betas[t] * jnp.sqrt(prev) / (1.0 - abar[t])
    ratio = jnp.where(first, 1.0, posterior_variance(schedule)[t] / var_p[t])  # var_q / var_p
    kl = 0.5 * (ratio - 1.0 - jnp.log(ratio)) * math.prod(x0.shape[1:])
    kl += _per_image(jnp.square(_bcast(coef, x0) * (x0 - x0_hat)) / _bcast(2.0 * var_p[t], x0))
    decoder = -_per_image(
        discretized_gaussian_logp(x0, x0_hat, jnp.sqrt(var_p[0]), levels, *data_range)
    )
    return jnp.where(first, decoder, kl)


def vlb(
    model_fn: ModelFn,
    schedule: Schedule,
    prediction: str,
    x0: jax.Array,
    keys: jax.Array,
    terms: int | None = None,
    variance: str = "small",
    levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    clip: bool = True,
) -> tuple[jax.Array, int]:
    """The bound -log p(x0) <= L in nats per image, and the network evaluations per image.

    x0: [B,...] on the levels' grid of data_range (pixels_to_data); keys: one PRNG key per
    image [B], so an image's figure does not depend on its batch. terms None: the full sum over
    all T indices, one lax.scan of T evaluations; K >= 2: the stratified estimate from K.
    """
    num = schedule.num_timesteps
    shape = x0.shape[1:]
    term = lambda t, noise: vlb_term(
        model_fn, schedule, prediction, x0, t, noise, variance, levels, data_range, clip
    )
    if terms is None or terms >= num:
        counts, edges = num, np.arange(num + 1)
    else:
        if terms < 2:
            raise ValueError(f"terms={terms} must be >= 2 (or None for the full sum)")
        rest = np.round(np.linspace(1, num, terms)).astype(np.int32)
        counts, edges = terms, np.concatenate([[0], rest])
    starts, sizes = jnp.asarray(edges[:-1]), jnp.asarray(np.diff(edges))
    widths = sizes.astype(jnp.float32)

    def draw(key, k):
        """Stratum k's index for one image (key num + k) and its x_t noise (key index)."""
        i = starts[k] + jax.random.randint(jax.random.fold_in(key, num + k), (), 0, sizes[k])
        return i, jax.random.normal(jax.random.fold_in(key, i), shape)

    def body(total, k):
        t, noise = jax.vmap(draw, (0, None))(keys, k)
        return total + widths[k] * term(t, noise), None

    total, _ = jax.lax.scan(body, prior_kl(schedule, x0), jnp.arange(counts))
    return total, counts
