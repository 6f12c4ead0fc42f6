"""Class-conditional DDPM on CIFAR-10 (32x32x3), with a UNet of the DDPM CIFAR-10 size.

    tfds build cifar10 --data_dir ~/tensorflow_datasets --file_format array_record  # once
    python train.py --config configs/cifar10_ddpm.py --workdir runs/cifar10

The UNet has 35,614,723 parameters (jax.eval_shape of init_params; Ho et al. 2020's CIFAR-10
model has 35.7 M): 128 channels at 32, 16, 8 and 4 pixels (multipliers 1, 2, 2, 2), two
ResBlocks per level, dropout 0.1, and a transformer block (self- and cross-attention to the
class) in the 4x4 middle; model.attention_levels=(1,) adds one at 16x16, as Ho et al. place
theirs, for 42.9 M. Their schedule and optimisation: linear betas 1e-4 to 0.02 over 1000 steps,
lr 2e-4 after 5000 warmup steps, batch 128, EMA 0.9999, gradient clip 1, random horizontal
flips, 800k steps. Every 10k steps: an EMA grid, and with FID Inception weights
(train.fid_weights or $JLDM_FID_WEIGHTS) the FID of 500 samples against the test split.
bfloat16 compute is for accelerators; on a CPU set model.dtype=float32.
"""

from jldm.configs import default


def get_config():
    c = default.get_config()
    c.data.name = "cifar10"
    c.data.resolution = 32
    c.data.channels = 3
    c.data.num_classes = 10
    c.data.random_flip = True
    c.model.channels = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attention_levels = ()
    c.model.num_heads = 4
    c.model.context_dim = 256
    c.model.norm_groups = 32
    c.model.dropout = 0.1
    c.model.dtype = "bfloat16"
    c.diffusion.schedule = "linear"
    c.diffusion.timesteps = 1000
    c.diffusion.beta_start = 1e-4
    c.diffusion.beta_end = 0.02
    c.train.steps = 800_000
    c.train.batch_size = 128
    c.train.lr = 2e-4
    c.train.warmup_steps = 5000
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.checkpoint_every = 10_000
    c.train.log_every = 500
    c.train.sample_every = 10_000
    c.train.sample_quality = 500
    c.sample.sampler = "ddim"
    c.sample.steps = 100
    c.sample.per_class = 10
    return c
