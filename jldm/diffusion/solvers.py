"""Samplers of the denoiser D in the EDM frame (jldm.diffusion.frame), each one lax.scan over a
descending sigma grid sigma_0 > ... > sigma_{N-1} > sigma_N = 0: DDIM's step with eta
(deterministic Euler at eta = 0, which is DDIM and the flow's Euler in this frame; the
ancestral DDPM step at eta = 1), Heun's method with stochastic churn (Karras et al. 2022) and
DPM-Solver++ 2M (Lu et al. 2022). The last step, onto sigma = 0, is D itself (Tweedie's
posterior mean). key draws the steps' noise and the inpainting noise; known pixels are pasted
back after every step (frame.paste).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.frame import Denoiser, Known, scan_grid


def ancestral(
    denoise: Denoiser,
    xbar: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    known: Known | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DDIM with eta over sigmas [N+1] ending at 0. -> x0 [B,...]; N evaluations.

    Step i: x <- D + sigma_down eps_hat + sigma_up z, eps_hat = (x - D) / sigma_i, with
    sigma_up = eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) (capped at sigma_{i+1}) and
    sigma_down^2 = sigma_{i+1}^2 - sigma_up^2. eta = 0: Euler on the probability-flow ODE
    (DDIM); eta = 1: the ancestral step, a draw from the DDPM posterior q(x_{i+1} | x_i, D).
    """
    stochastic = not (isinstance(eta, int | float) and eta == 0)

    def step(x, c, i, sigma, sigma_next, k):
        d = denoise(x, sigma)
        eps = (x - d) / sigma
        if not stochastic:  # no noise to draw
            return d + sigma_next * eps, c
        var = jnp.square(sigma_next) * (1.0 - jnp.square(sigma_next / sigma))
        up = jnp.minimum(eta * jnp.sqrt(jnp.maximum(var, 0.0)), sigma_next)
        down = jnp.sqrt(jnp.maximum(jnp.square(sigma_next) - jnp.square(up), 0.0))
        z = jax.random.normal(k, x.shape, x.dtype)
        return d + down * eps + up * z, c

    return scan_grid(step, xbar, sigmas, key, known)[0]


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
    and on the last, onto sigma = 0. One evaluation a step.
    """
    sigmas = jnp.asarray(sigmas, xbar.dtype)
    s, s_next = sigmas[:-1], sigmas[1:]
    h = jnp.log(s / jnp.where(s_next > 0, s_next, s))
    c = jnp.where(s_next[1:] > 0, h[1:] / (2.0 * jnp.where(h[:-1] > 0, h[:-1], 1.0)), 0.0)
    c = jnp.concatenate([jnp.zeros((1,), c.dtype), c])

    def step(x, d_prev, i, sigma, sigma_next, k):
        d = denoise(x, sigma)
        r = sigma_next / sigma
        return r * x + (1.0 - r) * ((1.0 + c[i]) * d - c[i] * d_prev), d

    return scan_grid(step, xbar, sigmas, key, known, jnp.zeros_like(xbar))[0]


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
    0, which stays Euler (that is, D; a cond, so its second evaluation is not run). 2N - 1
    evaluations. churn = 0 is the deterministic ODE solver. to_level(s) -> a sigma the model
    takes (a discrete model's nearest level).
    """
    n = jnp.asarray(sigmas).shape[0] - 1
    gamma = min(churn / n, np.sqrt(2.0) - 1.0)

    def step(x, c, i, sigma, sigma_next, k):
        sigma_hat = sigma
        if churn > 0:
            inside = (sigma >= t_min) & (sigma <= t_max)
            sigma_hat = to_level(sigma * (1.0 + jnp.where(inside, gamma, 0.0)))
            z = jax.random.normal(k, x.shape, x.dtype)
            # (s_hat - s)(s_hat + s): exactly 0 where no churn applies (a fused s_hat^2 - s^2
            # leaves a rounding remainder whose root is noise).
            x = x + noise * jnp.sqrt(jnp.maximum((sigma_hat - sigma) * (sigma_hat + sigma), 0)) * z
        slope = (x - denoise(x, sigma_hat)) / sigma_hat
        x_euler = x + (sigma_next - sigma_hat) * slope

        def corrected():
            slope_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            return x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)

        return jax.lax.cond(sigma_next > 0, corrected, lambda: x_euler), c

    return scan_grid(step, xbar, sigmas, key, known)[0]
