"""The Stable Diffusion 1.5 UNet shape (about 860 M parameters) for benchmarks.

64x64x4 latents, 320 channels with multipliers (1, 2, 4, 4), two ResBlocks per level,
cross-attention with 8 heads on levels 0-2 and in the mid block (not on level 3, so neither the
last down block nor the first up block has any), 1x1-conv projections, bfloat16 compute. The
condition reaches the UNet as 77 context tokens of width 768, the shape of CLIP ViT-L/14's text
features; the class embedder that makes them adds about 0.65 M parameters over the UNet itself.
No dataset of this shape ships with jldm: the config exists for bench/ (random init, random
latents), and for training once a latent dataset is prepared.
"""

from jldm.configs import default


def get_config():
    c = default.get_config()
    c.data.resolution = 64
    c.data.channels = 4
    c.model.channels = 320
    c.model.channel_mult = (1, 2, 4, 4)
    c.model.num_res_blocks = 2
    c.model.attention_levels = (0, 1, 2)
    c.model.num_heads = 8
    c.model.transformer_depth = 1
    c.model.norm_groups = 32
    c.model.context_dim = 768
    c.model.context_tokens = 77
    c.model.use_linear_projection = False
    c.model.dtype = "bfloat16"
    c.diffusion.schedule = "scaled_linear"
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012
    c.train.batch_size = 32
    c.train.lr = 1e-4
    c.train.warmup_steps = 500
    c.train.weight_decay = 1e-2
    c.train.ema_decay = 0.9999
    return c
