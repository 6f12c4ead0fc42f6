"""EDM (Karras et al. 2022) on the digits: the preconditioned denoiser, log-normal training
noise levels, Heun's 2nd-order sampler on the rho = 7 grid.

The UNet, data and training budget are those of digits_ddpm.py; only the objective differs.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.diffusion.objective = "edm"
    c.diffusion.sigma_data = 0.5
    c.diffusion.p_mean = -1.2
    c.diffusion.p_std = 1.2
    c.diffusion.sigma_min = 0.002  # the sampling range of the paper
    c.diffusion.sigma_max = 80.0
    c.sample.sampler = "heun"
    c.sample.steps = 18  # 35 evaluations, the paper's CIFAR-10 setting
    return c
