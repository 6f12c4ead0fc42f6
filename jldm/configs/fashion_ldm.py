"""Latent diffusion on Fashion-MNIST (32x32 -> 8x8x4 latents), prompts like "an ankle boot".

The digits_ldm.py recipe at Fashion-MNIST's size: a 3-level autoencoder (downsampling 4), then a
text-conditional DDPM on its scaled latents.
"""

from jldm.configs import digits_ldm


def get_config():
    c = digits_ldm.get_config()
    c.data.name = "fashion_mnist"
    c.data.resolution = 32
    c.model.channels = 64
    c.model.channel_mult = (1, 2)
    c.model.norm_groups = 16
    c.train.steps = 20000
    c.train.batch_size = 128
    c.train.lr = 1e-3
    c.train.checkpoint_every = 2000
    c.train.sample_every = 2000
    c.train.log_every = 100
    a = c.stage1
    a.channels = 64
    a.channel_mult = (1, 2, 2)
    a.norm_groups = 16
    a.disc_channels = 32
    a.disc_layers = 2
    a.steps = 10000
    a.disc_start = 5000
    a.perceptual_steps = 1000
    a.checkpoint_every = 2000
    a.log_every = 100
    return c
