"""VP SDE on the digits: continuous-time DSM, probability-flow ODE sampling.

The UNet, data and training budget are those of digits_ddpm.py; only the objective differs.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.diffusion.objective = "vpsde"
    c.diffusion.beta_min = 0.1
    c.diffusion.beta_max = 20.0
    c.sample.sampler = "ode"
    c.sample.steps = 25
    return c
