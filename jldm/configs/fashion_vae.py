"""A class-conditional convolutional VAE on Fashion-MNIST (28x28 -> 32x32), trained by the ELBO.

The digits VAE (digits_vae.py) at the Fashion-MNIST diffusion configs' resolution, with a wider
network.
"""

from jldm.configs import digits_vae


def get_config():
    c = digits_vae.get_config()
    c.data.name = "fashion_mnist"
    c.data.resolution = 32
    c.model.channels = 32
    c.model.channel_mult = (1, 2, 2)  # 32 -> 16 -> 8 -> 4
    c.model.hidden = 512
    c.vae.kl_warmup_steps = 2000
    c.train.steps = 20000
    c.train.batch_size = 128
    c.train.checkpoint_every = 2000
    c.train.log_every = 500
    return c
