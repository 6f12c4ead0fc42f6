"""A class-conditional convolutional VAE on the digits (16x16), trained by the ELBO.

The generative model next to the diffusion objectives: z ~ N(0, I) of model.latent_size, a
decoder p(x|z, y) with a Gaussian likelihood whose per-pixel variance it learns, on the 8-bit
pixels uniformly dequantised to [0, 1] (so its bits/dim compare with the SDE runs'). Train and
sample it like any other config; `python -m jldm.compare` reports its negative-ELBO and
importance-weighted (vae.iwae_samples) bits/dim and the quality of its prior samples.

The likelihood decides what the VAE is good at. Measured on 2 CPU cores (4000 steps, 2 min;
compare on 128 test images, 500 prior samples): learned variance, as here, 4.08 bits/dim
(IWAE-64; ELBO 4.20) but the decoder all but ignores the label (class accuracy 0.22, Frechet
38); --config.model.obs_var=fixed --config.model.obs_logvar=-3.2 (std 0.2) and
--config.model.latent_size=16 give class-following samples (accuracy 0.98, Frechet 9.5) at
7.16 bits/dim (a weaker reconstruction term lets the KL push the class out of z, onto y).
"""

import ml_collections

from jldm.configs import default


def get_config():
    c = default.get_config()
    del c.text
    c.data.name = "digits"
    c.data.resolution = 16

    c.model = m = ml_collections.ConfigDict()
    m.latent_size = 64
    m.channels = 16
    m.channel_mult = (1, 2)  # one stride-2 conv per entry: 16 -> 8 -> 4
    m.hidden = 256
    m.conditioning = "class"  # class: q(z|x, y) and p(x|z, y); none: unconditional
    m.likelihood = "gaussian"  # gaussian (dequantised pixels) | bernoulli
    m.obs_var = "learned"  # gaussian: learned (per pixel, from the decoder) | fixed
    m.obs_logvar = -4.6  # obs_var=fixed: log-variance on [0, 1] pixels (std 0.1)
    m.dtype = "float32"

    # What the run is, for the tools that list objectives (compare, config.json).
    c.diffusion = ml_collections.ConfigDict({"objective": "vae"})

    c.vae = v = ml_collections.ConfigDict()
    v.num_samples = 1  # L: posterior draws per example in the training ELBO
    v.kl_warmup_steps = 500  # the KL's weight rises linearly 0 -> 1 over these steps (0: off)
    v.binarize = False  # bernoulli only: binarise pixels (P(1) = intensity) at every step
    v.iwae_samples = 64  # K of the importance-weighted bound (compare, bits_per_dim)
    v.eval_images = 256  # test images whose ELBO bits/dim are logged (0: none)

    t = c.train
    t.steps = 4000
    t.batch_size = 64
    t.lr = 1e-3
    t.warmup_steps = 100
    t.ema_decay = 0.995
    t.checkpoint_every = 1000
    t.log_every = 200

    c.sample = s = ml_collections.ConfigDict()
    s.per_class = 10
    s.temperature = 1.0  # prior draws z ~ N(0, temperature^2 I)
    s.interpolation_rows = 10
    s.interpolation_steps = 8
    return c
