"""Fashion-MNIST on a CPU: the class-conditional DDPM at 16x16 in under 30 minutes on two cores.

fashion_ddpm.py's 32x32 UNet of 64 channels needs a GPU; this recipe renders the 28x28 images
at 16x16 and trains a 32-channel UNet with two levels (class labels through the mid block's
cross-attention), like make demo's digits recipe (digits_demo.py). Guidance trades class
accuracy against Frechet distance: at 1.25 the samples sit within 2x the real images' Frechet
with class accuracy 0.83; 1.5 gives 0.87 at 2.7x. The figures, against the real training
images at 16x16, are in bench/README.md (python bench/recipes.py --recipes fashion_cpu).
"""

from jldm.configs import fashion_ddpm


def get_config():
    c = fashion_ddpm.get_config()
    c.data.resolution = 16
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.attention_levels = ()
    c.model.norm_groups = 8
    c.train.steps = 4500
    c.train.batch_size = 64
    c.train.lr = 2e-3
    c.train.ema_decay = 0.999
    c.train.checkpoint_every = 1500
    c.train.sample_every = 0
    c.train.log_every = 50
    c.sample.sampler = "dpmpp2m"
    c.sample.steps = 20
    c.sample.guidance = 1.25
    return c
