from jldm.diffusion.likelihood import bits_per_dim, dequantize, ode_likelihood
from jldm.diffusion.score_losses import (
    as_score,
    exact_trace,
    geometric_sigmas,
    make_dsm_loss,
    make_esm_loss,
    make_ism_loss,
    make_ncsn_loss,
    make_sde_loss,
    make_sliced_loss,
    sample_probe,
)
from jldm.diffusion.score_samplers import (
    annealed_langevin,
    euler_maruyama,
    langevin,
    langevin_corrector,
    ode_sample,
    odeint_fixed,
    pc_sample,
)
from jldm.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE
from jldm.diffusion.toy import GaussianMixture, gaussian_mixture, ring

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "GaussianMixture",
    "SubVPSDE",
    "annealed_langevin",
    "as_score",
    "bits_per_dim",
    "dequantize",
    "euler_maruyama",
    "exact_trace",
    "gaussian_mixture",
    "geometric_sigmas",
    "langevin",
    "langevin_corrector",
    "make_dsm_loss",
    "make_esm_loss",
    "make_ism_loss",
    "make_ncsn_loss",
    "make_sde_loss",
    "make_sliced_loss",
    "ode_likelihood",
    "ode_sample",
    "odeint_fixed",
    "pc_sample",
    "ring",
    "sample_probe",
]
