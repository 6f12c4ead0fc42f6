"""Config -> the noise process: the discrete schedule, the forward SDE, the NCSN sigma ladder."""

import math

import jax
import jax.numpy as jnp
import ml_collections

from jldm.diffusion import score_losses
from jldm.diffusion.schedules import Schedule, make_schedule
from jldm.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE
from jldm.errors import UserError

_SDES = {
    "vesde": lambda f: VESDE(f.sigma_min, f.sigma_max),
    "vpsde": lambda f: VPSDE(f.beta_min, f.beta_max),
    "subvpsde": lambda f: SubVPSDE(f.beta_min, f.beta_max),
}


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """The discrete noise schedule of config.diffusion (beta_1..beta_T)."""
    f = config.diffusion
    try:
        return make_schedule(f.schedule, f.timesteps, f.beta_start, f.beta_end)
    except ValueError as e:
        raise UserError(f"diffusion.schedule: {e}") from None


def build_sde(config: ml_collections.ConfigDict) -> SDE | None:
    """The forward SDE of a *sde objective (None for the others)."""
    make = _SDES.get(config.diffusion.objective)
    return None if make is None else make(config.diffusion)


def ncsn_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
    """The NCSN ladder sigma_max > ... > sigma_min, geometric. -> [num_scales]."""
    f = config.diffusion
    return score_losses.geometric_sigmas(f.sigma_max, f.sigma_min, f.num_scales)


def noise_coefs(config: ml_collections.ConfigDict, c: jax.Array):
    """(alpha, std, tau) of conditioning c [B] (sigma for ncsn, t for SDEs), each [B].

    tau in [0, 1] is the position of c along the process (t itself, or log-sigma rescaled).
    """
    f = config.diffusion
    if f.objective == "ncsn":
        tau = jnp.log(c / f.sigma_min) / math.log(f.sigma_max / f.sigma_min)
        return jnp.ones_like(c), c, tau
    alpha, std = build_sde(config).mean_coef_std(c)
    return alpha, std, c
