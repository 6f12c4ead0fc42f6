"""VE SDE on the digits: continuous-time DSM, predictor-corrector sampling.

The UNet, data and training budget are those of digits_ddpm.py; only the objective differs.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.diffusion.objective = "vesde"
    c.diffusion.sigma_min = 0.01
    c.diffusion.sigma_max = 20.0
    c.sample.sampler = "pc"
    c.sample.steps = 50
    return c
