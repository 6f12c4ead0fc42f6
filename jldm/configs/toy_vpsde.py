"""VPSDE on the 8-mode ring, sampled by predictor-corrector."""

from jldm.configs import toy_base


def get_config():
    c = toy_base.get_config()
    c.diffusion.objective = "vpsde"
    c.sample.sampler = "pc"
    return c
