"""EDM (Karras et al. 2022, "Elucidating the design space of diffusion-based generative
models"): the preconditioned denoiser, its training loss and its probability-flow frame.

The process is x = x0 + sigma z (alpha = 1). The network F is wrapped as
D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) with c_skip = sigma_data^2 / (sigma^2 +
sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2), c_in = 1 / sqrt(sigma^2 +
sigma_data^2), c_noise = log(sigma) / 4; training draws log sigma ~ N(p_mean, p_std^2) and
weighs |D - x0|^2 by lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2, so
F's effective target (x0 - c_skip x) / c_out has unit variance and unit weight at every sigma.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.frame import Denoiser, Frame
from jldm.diffusion.likelihood import ProbabilityFlow, normal_logp
from jldm.diffusion.losses import drop_condition

# The paper's sampling range; c_noise over it is mapped onto the UNet's time input [0, 999].
SIGMA_LO, SIGMA_HI = 0.002, 80.0
_C_LO, _C_HI = math.log(SIGMA_LO) / 4, math.log(SIGMA_HI) / 4

# F(x_in [B,...], noise_in [B]) -> [B,...], the raw network
RawNet = Callable[[jax.Array, jax.Array], jax.Array]
# denoise_fn(params, x [B,...], sigma [B], labels, train, rngs) -> D [B,...]
DenoiseFn = Callable[..., jax.Array]


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def preconditioning(sigma: jax.Array, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of Karras et al.'s Table 1. sigma: [B] -> 4 x [B]."""
    total = jnp.square(sigma) + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    return c_skip, c_out, c_in, jnp.log(sigma) / 4


def noise_input(sigma: jax.Array) -> jax.Array:
    """The UNet's time input for sigma: c_noise = log(sigma) / 4 mapped affinely so that the
    paper's range [0.002, 80] spans [0, 999], the span the sinusoidal time embedding is built
    for (c_noise itself only spans [-1.6, 1.1]). A fixed map: the trained network does not
    depend on the sampling range chosen later. sigma: [B] -> [B]."""
    return 999.0 * (jnp.log(sigma) / 4 - _C_LO) / (_C_HI - _C_LO)


def denoise(net: RawNet, x: jax.Array, sigma: jax.Array, sigma_data: float) -> jax.Array:
    """D(x, sigma) = c_skip x + c_out F(c_in x, noise_input(sigma)). x: [B,...], sigma: [B]."""
    c_skip, c_out, c_in, _ = preconditioning(sigma, sigma_data)
    out = net(_bcast(c_in, x) * x, noise_input(sigma))
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * out


def loss_weight(sigma: jax.Array, sigma_data: float) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2. [B] -> [B]."""
    return (jnp.square(sigma) + sigma_data**2) / jnp.square(sigma * sigma_data)


def sample_sigma(key: jax.Array, n: int, p_mean: float, p_std: float) -> jax.Array:
    """Training noise levels, log sigma ~ N(p_mean, p_std^2). -> [n]."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (n,)))


def make_edm_loss(
    denoise_fn: DenoiseFn,
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    factor: Callable[[jax.Array], jax.Array] | None = None,
    null_label=None,
    cond_drop: float = 0.0,
) -> Callable:
    """EDM loss: mean over the batch of lambda(sigma) factor(sigma) mean_pixels |D - x0|^2.

    Returns loss_fn(params, rng, batch) -> (loss, metrics), batch = {"image": [B,H,W,C],
    "label": [B] or [B, L]}. factor(sigma [B]) -> [B] reweights the levels (None: EDM's own
    lambda alone); labels become null_label with probability cond_drop (classifier-free
    guidance). Per-pixel means keep the loss of order 1 like the DDPM loss.
    """
    if cond_drop > 0 and null_label is None:
        raise ValueError("cond_drop > 0 needs a null_label")

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x0, labels = batch["image"], batch["label"]
        k_sigma, k_noise, k_drop, k_dropout = jax.random.split(rng, 4)
        sigma = sample_sigma(k_sigma, x0.shape[0], p_mean, p_std).astype(x0.dtype)
        x = x0 + _bcast(sigma, x0) * jax.random.normal(k_noise, x0.shape, x0.dtype)
        if cond_drop > 0:
            labels = drop_condition(k_drop, labels, null_label, cond_drop)
        d = denoise_fn(params, x, sigma, labels, True, {"dropout": k_dropout})
        err = jnp.mean(jnp.square(d - x0).reshape(x0.shape[0], -1), axis=-1)
        w = loss_weight(sigma, sigma_data)
        if factor is not None:
            w = w * factor(sigma)
        loss = jnp.mean(w * err)
        return loss, {"loss": loss, "log_sigma": jnp.mean(jnp.log(sigma))}

    return loss_fn


def edm_frame(sigma_min: float, sigma_max: float, sigma_data: float, rho: float = 7.0) -> Frame:
    """A denoiser model fn(x, sigma [B]) -> D as a frame.Frame (xbar = x, alpha = 1).

    Its prior at sigma is N(0, sigma^2 + sigma_data^2), the marginal of data of variance
    sigma_data^2. Its native grid is Karras et al.'s, sigma^(1/rho) uniform.
    """

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            return fn(xbar, jnp.full((xbar.shape[0],), sigma, xbar.dtype))

        return d

    def native(n: int, start: float) -> np.ndarray:
        hi, lo = min(start, sigma_max) ** (1 / rho), sigma_min ** (1 / rho)
        return (hi + np.linspace(0.0, 1.0, n) * (lo - hi)) ** rho

    return Frame(denoiser, float(sigma_min), float(sigma_max), float(sigma_data) ** 2, None, native)


def probability_flow(
    denoiser: Callable[[jax.Array, jax.Array], jax.Array],
    sigma_min: float,
    sigma_max: float,
    sigma_data: float,
) -> ProbabilityFlow:
    """EDM's probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. eq. 3
    with sigma(t) = t) from sigma_min (the data) to sigma_max, where N(0, (sigma_max^2 +
    sigma_data^2) I) stands in for the noised data. denoiser(x [B,...], sigma [B]) -> D."""

    def drift(x: jax.Array, sigma: jax.Array) -> jax.Array:
        return (x - denoiser(x, sigma)) / _bcast(sigma, x)

    std = math.sqrt(sigma_max**2 + sigma_data**2)
    prior = lambda z: normal_logp(z, std)
    return ProbabilityFlow(drift, prior, float(sigma_min), float(sigma_max))
