"""Config -> the probability-flow solvers dpmpp2m and heun on the objective's process, and the
flow-matching samplers euler and heun.

dpmpp2m and heun run in the EDM frame (jldm.diffusion.solvers): the discrete schedule of ddpm,
the SDE of vesde / vpsde / subvpsde, EDM's denoiser or the flow's velocity, read as a denoiser
D(x / alpha, sigma). They start at min(the model's sigma_max, sample.sigma_max) and end on
sigma = 0 with D itself. dpmpp2m's grid is uniform in log-SNR, heun's is Karras et al.'s
(sample.rho); a discrete model's grid sits on distinct timesteps of its own. For objective=flow,
euler and heun step dx/dt = v(x, t) on a grid uniform in t from the prior N(0, I) at t = 1 to
t = 0 (jldm.diffusion.flow_matching).
"""

from collections.abc import Callable

import jax
import ml_collections

from jldm.build.noise import build_schedule, build_sde
from jldm.diffusion import edm, flow_matching, solvers
from jldm.diffusion.likelihood import ProbabilityFlow, sde_flow
from jldm.errors import UserError


def frame(config: ml_collections.ConfigDict, clip: bool = False) -> solvers.Frame:
    """The objective's process in the EDM frame; clip: x0 estimates to [-1, 1] (ddpm only)."""
    f = config.diffusion
    if f.objective == "ddpm":
        return solvers.discrete_frame(build_schedule(config), f.prediction, clip)
    if f.objective == "edm":
        return edm.edm_frame(f.sigma_min, f.sigma_max, f.sigma_data)
    if f.objective == "flow":
        return flow_matching.flow_frame(config.sample.get("eps", 1e-3))
    sde = build_sde(config)
    if sde is None:
        raise UserError(f"diffusion.objective={f.objective!r} has no probability-flow ODE")
    return solvers.sde_frame(sde, config.sample.get("eps", 1e-3))


def likelihood_flow(config: ml_collections.ConfigDict, fn: Callable) -> ProbabilityFlow | None:
    """The objective's probability-flow ODE for likelihoods; fn(x [B,...], c [B]) is make_net's
    net with params and labels bound (a score, EDM's denoiser or the flow's velocity). None:
    the objective has no such ODE (ddpm's density is its variational bound; ncsn has none)."""
    f = config.diffusion
    if f.objective == "edm":
        return edm.probability_flow(fn, f.sigma_min, f.sigma_max, f.sigma_data)
    if f.objective == "flow":
        return flow_matching.probability_flow(fn)
    sde = build_sde(config)
    return None if sde is None else sde_flow(sde, fn, f.get("eps_t", 1e-5))


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


def _on_time_grid(p, solve: Callable) -> Callable:
    """sample(fn, key, known): solve(v, x1, ts, key, known) from x1 ~ N(0, I) over p.steps."""
    ts = flow_matching.time_grid(p.steps)

    def go(fn, key, known=None):
        k_init, k_run = jax.random.split(key)
        return solve(fn, jax.random.normal(k_init, p.shape), ts, k_run, known)

    return go


def euler(p) -> Callable:
    """Euler on the flow's ODE for a samplers.Plan p: p.steps evaluations, uniform in t."""
    return _on_time_grid(p, flow_matching.euler)


def heun(p) -> Callable:
    """Heun for a samplers.Plan p: 2 p.steps - 1 evaluations. On Karras et al.'s grid, churn
    from sample.s_churn, s_tmin, s_tmax, s_noise; for objective=flow, uniform in t."""
    if p.config.diffusion.objective == "flow":
        if float(p.config.sample.get("s_churn", 0.0)) > 0:
            raise UserError("sample.s_churn > 0: the flow's heun sampler has no churn, set it to 0")
        return _on_time_grid(p, flow_matching.heun)
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
