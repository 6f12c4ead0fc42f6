"""Class-conditional DDPM on scikit-learn's bundled 8x8 digits, upsampled to 16x16.

Sized for `make demo`: about five minutes of training on two CPU cores. The 16-channel UNet
keeps 16x16 convolutions cheap; class labels reach it through the mid block's cross-attention.
"""

from jldm.configs import default


def get_config():
    c = default.get_config()
    c.data.name = "digits"
    c.data.resolution = 16
    c.model.channels = 16
    c.model.channel_mult = (1, 2, 4)
    c.model.attention_levels = ()
    c.model.norm_groups = 8
    c.model.num_heads = 4
    c.model.context_dim = 64
    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.lr = 2e-3
    c.train.warmup_steps = 100
    c.train.ema_decay = 0.995
    c.train.checkpoint_every = 500
    c.train.log_every = 50
    return c
