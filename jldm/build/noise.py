"""Config -> the noise process: the discrete schedule, the forward SDE, the NCSN sigma ladder;
and the checks of each objective's config.diffusion settings (UserError on a bad one)."""

import math

import jax
import jax.numpy as jnp
import ml_collections

from jldm.diffusion import score_losses
from jldm.diffusion.flow_matching import TIME_SAMPLING
from jldm.diffusion.schedules import Schedule, make_schedule, schedule_of_betas
from jldm.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE
from jldm.diffusion.weighting import WEIGHTINGS
from jldm.errors import UserError

_SDES = {
    "vesde": lambda f: VESDE(f.sigma_min, f.sigma_max),
    "vpsde": lambda f: VPSDE(f.beta_min, f.beta_max),
    "subvpsde": lambda f: SubVPSDE(f.beta_min, f.beta_max),
}


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """The discrete noise schedule of config.diffusion (beta_1..beta_T)."""
    f = config.diffusion
    betas = f.get("betas")  # a pretrained folder's own (trained_betas), else None
    if betas:
        return schedule_of_betas(betas)
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


def noise_coefs(config: ml_collections.ConfigDict):
    """coefs(c [B]) -> (alpha, std, tau), each [B], of conditioning c (sigma for ncsn, t for
    SDEs); tau in [0, 1] is the position of c along the process (t itself, or log-sigma
    rescaled). The config is read here, once, not inside the traced function."""
    f = config.diffusion
    if f.objective == "ncsn":
        lo, span = float(f.sigma_min), math.log(f.sigma_max / f.sigma_min)
        return lambda c: (jnp.ones_like(c), c, jnp.log(c / lo) / span)
    sde = build_sde(config)

    def coefs(c):
        alpha, std = sde.mean_coef_std(c)
        return alpha, std, c

    return coefs


def weighting_of(f: ml_collections.ConfigDict) -> tuple[str, float]:
    """(diffusion.weighting, min_snr_gamma); runs from before weightings have the defaults."""
    return f.get("weighting", "default"), float(f.get("min_snr_gamma", 5.0))


def positive(name: str, value) -> None:
    """diffusion.<name> must be > 0."""
    if not value > 0:
        raise UserError(f"diffusion.{name}={value} must be > 0: set a positive value")


def sigma_range(f: ml_collections.ConfigDict) -> None:
    """0 < diffusion.sigma_min < sigma_max."""
    if not 0 < f.sigma_min < f.sigma_max:
        raise UserError(
            f"diffusion.sigma_min={f.sigma_min}, sigma_max={f.sigma_max}: need "
            "0 < sigma_min < sigma_max"
        )


def check_ncsn(f: ml_collections.ConfigDict) -> None:
    """ncsn: the sigma range and a ladder of at least two levels."""
    sigma_range(f)
    if f.num_scales < 2:
        raise UserError(f"diffusion.num_scales={f.num_scales} must be >= 2 for ncsn")


def check_vesde(f: ml_collections.ConfigDict) -> None:
    """vesde: the sigma range and eps_t > 0."""
    sigma_range(f)
    positive("eps_t", f.eps_t)


def check_vp(f: ml_collections.ConfigDict) -> None:
    """vpsde, subvpsde: 0 < beta_min <= beta_max and eps_t > 0."""
    if not 0 < f.beta_min <= f.beta_max:
        raise UserError(
            f"diffusion.beta_min={f.beta_min}, beta_max={f.beta_max}: need 0 < beta_min <= beta_max"
        )
    positive("eps_t", f.eps_t)


def check_sliced(f: ml_collections.ConfigDict) -> None:
    """sliced: at least one projection of a known probe."""
    if f.n_projections < 1:
        raise UserError(f"diffusion.n_projections={f.n_projections} must be >= 1")
    if f.probe not in ("rademacher", "gaussian"):
        raise UserError(f"diffusion.probe={f.probe!r}: use rademacher or gaussian")


def check_network_output(f: ml_collections.ConfigDict) -> None:
    """ddpm, edm, flow: the score parameterisation (no energy) and cond_drop in [0, 1)."""
    if f.parameterization != "score":
        raise UserError("diffusion.parameterization=energy needs a score objective (ncsn, *sde)")
    if not 0 <= f.cond_drop < 1:
        raise UserError(f"diffusion.cond_drop={f.cond_drop} must be in [0, 1)")


def check_ddpm(f: ml_collections.ConfigDict) -> None:
    """ddpm: a known prediction and an integer number of timesteps."""
    check_network_output(f)
    if f.prediction not in ("eps", "x0", "v"):
        raise UserError(f"diffusion.prediction={f.prediction!r}: use eps, x0 or v")
    if not isinstance(f.timesteps, int) or f.timesteps < 1:
        raise UserError(f"diffusion.timesteps={f.timesteps} must be an integer >= 1")
    if not f.get("betas") and f.schedule != "cosine" and not f.beta_start <= f.beta_end:
        raise UserError(
            f"diffusion.beta_start={f.beta_start} is above beta_end={f.beta_end}: the noise "
            "grows along the chain, so beta_start <= beta_end (swap them)"
        )


def check_edm(f: ml_collections.ConfigDict) -> None:
    """edm: the sampling sigma range, sigma_data > 0 and p_std > 0."""
    check_network_output(f)
    sigma_range(f)
    positive("sigma_data", f.sigma_data)
    positive("p_std", f.p_std)


def check_flow(f: ml_collections.ConfigDict) -> None:
    """flow: a known time sampling and logit_std > 0."""
    check_network_output(f)
    if f.time_sampling not in TIME_SAMPLING:
        raise UserError(
            f"diffusion.time_sampling={f.time_sampling!r}: use {' or '.join(TIME_SAMPLING)}"
        )
    positive("logit_std", f.logit_std)


# The diffusion keys only the ddpm objective reads: its discrete schedule and prediction.
DDPM_ONLY = ("schedule", "timesteps", "beta_start", "beta_end", "prediction")


def unread_keys(f: ml_collections.ConfigDict) -> dict[str, str]:
    """The diffusion.* keys that f's objective and schedule do not read -> why, in words."""
    objective = f.get("objective")  # a config lacking it is refused where it is read
    if objective is None:
        return {}
    if objective != "ddpm":
        return {k: f"diffusion.objective={objective} reads no diffusion.{k}" for k in DDPM_ONLY}
    if not f.get("betas") and f.get("schedule") == "cosine":
        why = "the cosine schedule reads no beta_start or beta_end (linear and scaled_linear do)"
        return {"beta_start": why, "beta_end": why}
    return {}


def check_weighting(objective: str, allowed: tuple[str, ...], f: ml_collections.ConfigDict) -> None:
    """diffusion.weighting must be known and one of allowed, the objective's."""
    name, gamma = weighting_of(f)
    if name not in WEIGHTINGS:
        raise UserError(f"diffusion.weighting={name!r} is not known: use {', '.join(WEIGHTINGS)}")
    if name == "likelihood" and name not in allowed:
        raise UserError(
            f"diffusion.weighting=likelihood needs a continuous-time SDE objective (vesde, "
            f"vpsde, subvpsde), not {objective!r}: use {' or '.join(allowed)}"
        )
    if name not in allowed:
        raise UserError(
            f"diffusion.weighting={name!r} does not apply to objective {objective!r}: use "
            f"{' or '.join(allowed)}"
        )
    if name == "min_snr":
        positive("min_snr_gamma", gamma)
