"""Bounds on a VAE's log-likelihood log p(x): the ELBO and the importance-weighted bound.

With K draws z_k ~ q(z|x) and weights w_k = p(x|z_k) p(z_k) / q(z_k|x), mean_k w_k is an
unbiased estimate of p(x), so log mean_k w_k (IWAE, Burda et al. 2016) is a lower bound in
expectation that rises with K towards log p(x); K = 1 is the ELBO. At the exact posterior every
weight equals p(x) and both bounds are exact.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jldm.diffusion.vae_losses import (
    DecodeFn,
    EncodeFn,
    Params,
    check_likelihood,
    draw_log_likelihoods,
    gaussian_log_likelihood,
    posterior_draws,
)


def log_mean_exp(a: jax.Array, axis: int = 0) -> jax.Array:
    """log(mean(exp(a))) along axis, computed stably: [..., K, ...] -> [..., ...]."""
    return jax.scipy.special.logsumexp(a, axis=axis) - math.log(a.shape[axis])


def make_bounds(
    encode_fn: EncodeFn,
    decode_fn: DecodeFn,
    likelihood: str = "gaussian",
    num_samples: int = 1,
    obs_logvar: float | Callable[[Params], jax.Array] = 0.0,
) -> Callable:
    """The ELBO and the importance-weighted bound (Burda et al. 2016) on log p(x), in nats.

    Arguments as make_elbo_loss. Returns bounds(params, key, x [B,...], *cond) -> (elbo [B],
    iwae [B]) from K = num_samples draws z_k ~ q(z|x) and their log weights
    log w_k = log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x): elbo = mean_k log w_k (an
    unbiased ELBO estimate) and iwae = log mean_k w_k, whose expectation rises with K towards
    log p(x). From the same draws iwae >= elbo always (Jensen); K = 1 makes them equal.
    """
    check_likelihood(likelihood, num_samples)

    def bounds(params: Params, key: jax.Array, x: jax.Array, *cond) -> tuple[jax.Array, jax.Array]:
        mean, logvar, z = posterior_draws(encode_fn, params, key, x, cond, num_samples)
        ll = draw_log_likelihoods(decode_fn, likelihood, obs_logvar, params, x, z, cond)
        flat = z.reshape(-1, *z.shape[2:])
        reps = lambda a: jnp.broadcast_to(a[None], z.shape).reshape(flat.shape)
        log_prior = gaussian_log_likelihood(flat, jnp.zeros_like(flat), jnp.zeros(()))
        log_q = gaussian_log_likelihood(flat, reps(mean), reps(logvar))
        log_w = ll + (log_prior - log_q).reshape(ll.shape)
        return jnp.mean(log_w, axis=0), log_mean_exp(log_w, axis=0)

    return bounds
