"""Flow matching (rectified flow) on the digits: the UNet predicts the velocity z - x0 on the
linear path x_t = (1 - t) x0 + t z; Heun's method from N(0, I) at t = 1 to the data at t = 0.

The UNet, data and training budget are those of digits_ddpm.py; only the objective differs.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.diffusion.objective = "flow"
    c.diffusion.time_sampling = "logit_normal"  # Esser et al. 2024: more weight mid-path
    c.diffusion.logit_mean = 0.0
    c.diffusion.logit_std = 1.0
    c.sample.sampler = "heun"
    c.sample.steps = 18  # 35 evaluations
    return c
