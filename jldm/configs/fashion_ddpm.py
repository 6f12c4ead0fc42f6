"""Class-conditional DDPM on Fashion-MNIST (Debian's dataset-fashion-mnist), 28x28 -> 32x32."""

from jldm.configs import default


def get_config():
    c = default.get_config()
    c.data.name = "fashion_mnist"
    c.data.resolution = 32
    c.model.channels = 64
    c.model.channel_mult = (1, 2, 2)
    c.model.attention_levels = (1, 2)
    c.train.steps = 20000
    c.train.batch_size = 128
    c.train.lr = 1e-3
    c.train.checkpoint_every = 2000
    c.train.sample_every = 2000
    c.train.log_every = 100
    return c
