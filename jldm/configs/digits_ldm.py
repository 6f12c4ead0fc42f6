"""Latent diffusion on the digits: a KL autoencoder (16x16 -> 8x8x4), then a text-conditional
DDPM on its scaled latents. Prompts such as "a handwritten digit three" reach the UNet through
a small CLIP-style text encoder and cross-attention.

Both stages run from one command; set stage1.workdir to reuse a finished stage 1.
"""

import ml_collections

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.model.conditioning = "text"
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.attention_levels = (1,)
    c.model.norm_groups = 8
    c.diffusion.cond_drop = 0.1
    # Stable Diffusion's schedule. Latents are not clipped to a range at sampling, and under the
    # cosine schedule (alpha_bar_T = 2.4e-9) DDIM's first step multiplies the x0 error by
    # sqrt(alpha_bar_prev / alpha_bar_T) = 632 at 50 steps: the samples blow up.
    c.diffusion.schedule = "scaled_linear"
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012

    c.stage1 = a = ml_collections.ConfigDict()
    a.workdir = ""  # a finished stage-1 folder to reuse; empty: train it in WORKDIR/stage1
    a.channels = 32
    a.channel_mult = (1, 2)  # downsampling 2^(levels - 1) = 2
    a.num_res_blocks = 1
    a.latent_channels = 4
    a.norm_groups = 8
    a.rec_loss = "l1"
    a.kl_weight = 1e-6
    a.perceptual_weight = 0.1
    a.perceptual_weights = ""  # a PerceptualNet msgpack (local or gs://); empty: trained here
    a.perceptual_steps = 300
    a.disc_channels = 16
    a.disc_layers = 2
    a.disc_weight = 0.05  # at 0.5 the adversarial term swamped the L1 term at disc_start
    a.disc_start = 600
    a.steps = 1000
    a.batch_size = 64
    a.lr = 1e-3
    a.warmup_steps = 50
    a.weight_decay = 0.0
    a.grad_clip = 1.0
    a.checkpoint_every = 500
    a.keep_checkpoints = 2
    a.log_every = 50
    a.skip_nonfinite = False  # True: skip NaN/Inf steps and count them instead of stopping
    # skip_nonfinite: the run stops (after a checkpoint) once more than this fraction of its
    # steps were skipped.
    a.max_skipped_fraction = 0.1
    return c
