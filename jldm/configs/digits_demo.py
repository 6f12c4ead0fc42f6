"""`make demo`'s recipe: the class-conditional digits DDPM at their native 8x8, 32 channels.

The best that about four minutes of training on two CPU cores bought in the recipe study
(docs/recipes/digits.md, bench/recipes.py): against digits_ddpm.py's 16x16 upsampled images and
16 channels, the native resolution lets a twice wider UNet take more steps in the same time, and
guidance 1.25 keeps the samples about as varied as the data while they stay in their class.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.data.resolution = 8
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.norm_groups = 8
    c.train.steps = 3000
    c.train.checkpoint_every = 1000
    c.sample.sampler = "dpmpp2m"
    c.sample.steps = 20
    c.sample.guidance = 1.25
    return c
