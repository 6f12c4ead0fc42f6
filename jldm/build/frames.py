"""Config -> the objective's process in the EDM frame (jldm.diffusion.frame), read once, and
its probability-flow ODE for likelihoods.

ddpm: the discrete schedule (its prediction read as D, x0 clipped on request); ncsn: the score
over its sigma ladder; vesde / vpsde / subvpsde: the score over the SDE's times [sample.eps, T];
edm: the preconditioned denoiser over [diffusion.sigma_min, sigma_max]; flow: the velocity over
t in [sample.eps, 1 - sample.eps]. The toy objectives esm, ism, sliced and dsm learn the score
of one noise level only and have no frame.
"""

from collections.abc import Callable

import ml_collections

from jldm.build.noise import build_schedule, build_sde
from jldm.diffusion import edm, flow_matching
from jldm.diffusion import frame as fr
from jldm.diffusion.likelihood import ProbabilityFlow, sde_flow


def eps(config: ml_collections.ConfigDict) -> float:
    """sample.eps: where sampling stops on an SDE's time or the flow's t (then one step to 0)."""
    return float(config.sample.get("eps", 1e-3))


def frame_of(config: ml_collections.ConfigDict, clip: bool = False) -> fr.Frame | None:
    """The objective's process in the EDM frame; clip: x0 estimates to [-1, 1] (ddpm only).
    None: the objective has no noise process (esm, ism, sliced, dsm)."""
    f = config.diffusion
    if f.objective == "ddpm":
        return fr.discrete_frame(build_schedule(config), f.prediction, clip)
    if f.objective == "ncsn":
        return fr.ncsn_frame(f.sigma_min, f.sigma_max)
    if f.objective == "edm":
        return edm.edm_frame(f.sigma_min, f.sigma_max, f.sigma_data)
    if f.objective == "flow":
        return flow_matching.flow_frame(eps(config))
    sde = build_sde(config)
    return None if sde is None else fr.sde_frame(sde, eps(config))


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


def start(config: ml_collections.ConfigDict, frame: fr.Frame) -> float:
    """The first sigma of a Karras or log-SNR grid: min(sigma_max, sample.sigma_start)."""
    s = config.sample
    # Runs saved before the key was renamed call it sample.sigma_max.
    return fr.start_sigma(frame, float(s.get("sigma_start", s.get("sigma_max", 80.0))))
