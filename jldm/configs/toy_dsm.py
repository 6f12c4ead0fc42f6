"""DSM on the 8-mode ring, sampled by Langevin dynamics."""

from jldm.configs import toy_base


def get_config():
    c = toy_base.get_config()
    c.diffusion.objective = "dsm"
    c.sample.sampler = "langevin"
    return c
