"""Config -> the probability-flow solvers dpmpp2m and heun on the objective's process.

Both run in the EDM frame (jldm.diffusion.solvers): the discrete schedule of ddpm or the SDE of
vesde / vpsde / subvpsde, read as a denoiser D(x / alpha, sigma). They start at min(the model's
sigma_max, sample.sigma_max) and end on sigma = 0 with D itself. dpmpp2m's grid is uniform in
log-SNR, heun's is Karras et al.'s (sample.rho); a discrete model's grid sits on distinct
timesteps of its own.
"""

from collections.abc import Callable

import jax
import ml_collections

from jldm.build.noise import build_schedule, build_sde
from jldm.diffusion import solvers
from jldm.errors import UserError


def frame(config: ml_collections.ConfigDict, clip: bool = False) -> solvers.Frame:
    """The objective's process in the EDM frame; clip: x0 estimates to [-1, 1] (ddpm only)."""
    f = config.diffusion
    if f.objective == "ddpm":
        return solvers.discrete_frame(build_schedule(config), f.prediction, clip)
    sde = build_sde(config)
    if sde is None:
        raise UserError(f"diffusion.objective={f.objective!r} has no probability-flow ODE")
    return solvers.sde_frame(sde, config.sample.get("eps", 1e-3))


def start(config: ml_collections.ConfigDict, fr: solvers.Frame) -> float:
    """The first sigma: min(the model's sigma_max, sample.sigma_max), on a model level."""
    return solvers.start_sigma(fr, float(config.sample.get("sigma_max", 80.0)))


def max_steps(config: ml_collections.ConfigDict) -> int | None:
    """The most steps (a discrete model's timesteps below the start), None: unbounded."""
    fr = frame(config)
    return solvers.max_steps(fr, start(config, fr))


def _from_prior(fr: solvers.Frame, first: float, shape, solve: Callable) -> Callable:
    """sample(fn, key, known): solve(D, xbar, key, known) from the frame's prior at first."""

    def go(fn, key, known=None):
        k_init, k_run = jax.random.split(key)
        xbar = solvers.prior(fr, k_init, shape, first)
        return solve(fr.denoiser(fn), xbar, k_run, known)

    return go


def dpmpp2m(p) -> Callable:
    """DPM-Solver++ 2M for a samplers.Plan p: p.steps evaluations, a grid uniform in log-SNR."""
    fr = frame(p.config, p.clip)
    first = start(p.config, fr)
    sigmas = solvers.log_snr_sigmas(fr, p.steps, first)
    return _from_prior(
        fr, first, p.shape, lambda d, x, k, known: solvers.dpmpp_2m(d, x, sigmas, k, known)
    )


def heun(p) -> Callable:
    """Heun for a samplers.Plan p on Karras et al.'s grid: 2 p.steps - 1 evaluations, churn
    from sample.s_churn, s_tmin, s_tmax, s_noise."""
    s, fr = p.config.sample, frame(p.config, p.clip)
    first = start(p.config, fr)
    sigmas = solvers.karras_sigmas(fr, p.steps, first, float(s.get("rho", 7.0)))
    churn = dict(
        churn=float(s.get("s_churn", 0.0)),
        t_min=float(s.get("s_tmin", 0.0)),
        t_max=float(s.get("s_tmax", float("inf"))),
        noise=float(s.get("s_noise", 1.0)),
        to_level=lambda sigma: solvers.snap(fr, sigma),
    )
    return _from_prior(
        fr, first, p.shape, lambda d, x, k, known: solvers.heun(d, x, sigmas, k, known, **churn)
    )
