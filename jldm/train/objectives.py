"""Score-based objectives on the class-conditional UNet: NCSN (annealed DSM) and the SDEs.

The same UNet serves every objective; only what its inputs and output mean changes. A score
model is conditioned on c, a noise level sigma (ncsn) or a time t (vesde, vpsde, subvpsde), and
x_c = alpha(c) x0 + std(c) z. The network sees c_in * x_c with c_in = 1 / sqrt(alpha^2 + std^2)
(unit variance for unit-variance data, so VE inputs of std 50 stay in range) and the time input
999 * tau, tau in [0, 1] the position of c along the process (tau = t, or log-sigma rescaled).

- score parameterisation: s = -u / std, u the UNet output (u estimates the noise z);
- energy parameterisation: E = 0.5 |x_c - alpha D|^2 / std^2 with D the UNet output (a clean-data
  estimate), s = -grad_x E, which at D = 0 is the score of N(0, std^2 I).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jldm.diffusion import score_losses
from jldm.diffusion.losses import drop_condition
from jldm.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE
from jldm.errors import UserError

SCORE_OBJECTIVES = ("ncsn", "vesde", "vpsde", "subvpsde")
OBJECTIVES = ("ddpm",) + SCORE_OBJECTIVES
SAMPLERS = {
    "ddpm": ("ddpm", "ddim"),
    "ncsn": ("als",),
    "vesde": ("pc", "em", "ode"),
    "vpsde": ("pc", "em", "ode"),
    "subvpsde": ("pc", "em", "ode"),
}

# score(params, x [B,H,W,C], c [B], labels [B], train, rngs) -> grad_x log p_c [B,H,W,C]
ScoreNet = Callable[..., jax.Array]


def check_objective(config: ml_collections.ConfigDict) -> None:
    """diffusion.objective, diffusion.parameterization and sample.sampler fit together."""
    f = config.diffusion
    if f.objective not in OBJECTIVES:
        raise UserError(f"diffusion.objective={f.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if f.parameterization not in ("score", "energy"):
        raise UserError(f"diffusion.parameterization={f.parameterization!r}: use score or energy")
    if f.objective == "ddpm" and f.parameterization != "score":
        raise UserError("diffusion.parameterization=energy needs a score objective (ncsn, *sde)")
    check_sampler(config, config.sample.sampler)


def check_sampler(config: ml_collections.ConfigDict, sampler: str) -> None:
    """The sampler must be one the run's objective defines."""
    allowed = SAMPLERS[config.diffusion.objective]
    if sampler not in allowed:
        raise UserError(
            f"sampler {sampler!r} does not apply to objective {config.diffusion.objective!r}: "
            f"use {' or '.join(allowed)}"
        )


def build_sde(config: ml_collections.ConfigDict) -> SDE | None:
    """The forward SDE of a *sde objective (None otherwise)."""
    f = config.diffusion
    if f.objective == "vesde":
        return VESDE(f.sigma_min, f.sigma_max)
    if f.objective == "vpsde":
        return VPSDE(f.beta_min, f.beta_max)
    if f.objective == "subvpsde":
        return SubVPSDE(f.beta_min, f.beta_max)
    return None


def ncsn_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
    """The NCSN ladder sigma_max > ... > sigma_min, geometric. -> [num_scales]."""
    f = config.diffusion
    return score_losses.geometric_sigmas(f.sigma_max, f.sigma_min, f.num_scales)


def noise_coefs(config: ml_collections.ConfigDict, c: jax.Array):
    """(alpha, std, tau) of conditioning c [B] (sigma for ncsn, t for SDEs), each [B]."""
    f = config.diffusion
    if f.objective == "ncsn":
        tau = jnp.log(c / f.sigma_min) / math.log(f.sigma_max / f.sigma_min)
        return jnp.ones_like(c), c, tau
    alpha, std = build_sde(config).mean_coef_std(c)
    return alpha, std, c


def make_score_net(config: ml_collections.ConfigDict, model) -> ScoreNet:
    """score(params, x, c, labels, train=False, rngs=None): the UNet read as a score model."""
    energy = config.diffusion.parameterization == "energy"

    def score(params, x, c, labels, train=False, rngs=None):
        alpha, std, tau = (v.reshape(-1, 1, 1, 1) for v in noise_coefs(config, c))
        c_in = jax.lax.rsqrt(jnp.square(alpha) + jnp.square(std))

        def unet(y):
            return model.apply(
                {"params": params}, c_in * y, 999.0 * tau.reshape(-1), labels, train, rngs=rngs
            )

        if not energy:
            return -unet(x) / std

        def total_energy(y):
            # Samples do not interact, so grad of the batch sum is each sample's gradient.
            return 0.5 * jnp.sum(jnp.square((y - alpha * unet(y)) / std))

        return -jax.grad(total_energy)(x)

    return score


def make_score_loss(config: ml_collections.ConfigDict, model, null=None) -> Callable:
    """loss_fn(params, rng, batch) -> (loss, metrics) for a score objective on image batches.

    batch = {"image": [B,H,W,C] in [-1, 1], "label": [B]}; labels become the null class with
    probability diffusion.cond_drop (for classifier-free guidance). The loss is the NCSN or
    continuous-time DSM of jldm.diffusion.score_losses, so its scale is theirs.
    """
    f = config.diffusion
    net = make_score_net(config, model)
    null = config.data.num_classes if null is None else null

    def loss_fn(params, rng, batch):
        k_drop, k_dropout, k_loss = jax.random.split(rng, 3)
        labels = batch["label"]
        if f.cond_drop > 0:
            labels = drop_condition(k_drop, labels, null, f.cond_drop)

        def apply_fn(p, x, c):
            return net(p, x, c, labels, True, {"dropout": k_dropout})

        if f.objective == "ncsn":
            inner = score_losses.make_ncsn_loss(apply_fn, ncsn_sigmas(config))
        else:
            inner = score_losses.make_sde_loss(apply_fn, build_sde(config), f.eps_t)
        return inner(params, k_loss, {"x": batch["image"]})

    return loss_fn
