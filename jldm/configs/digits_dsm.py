"""NCSN on the digits: multi-sigma denoising score matching, annealed Langevin sampling.

The UNet, data and training budget are those of digits_ddpm.py; only the objective differs.
sigma_max is about the largest distance between two training images (Song & Ermon 2020).
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.diffusion.objective = "ncsn"
    c.diffusion.sigma_min = 0.01
    c.diffusion.sigma_max = 20.0
    c.diffusion.num_scales = 20
    c.sample.sampler = "als"
    c.sample.steps_per_sigma = 5
    return c
