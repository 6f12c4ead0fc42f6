"""Config -> model, schedule and loss: the one place that reads model and diffusion settings."""

import jax.numpy as jnp
import ml_collections

from jldm.diffusion.losses import make_ddpm_loss
from jldm.diffusion.schedules import Schedule, make_schedule
from jldm.errors import UserError
from jldm.nn.models import ClassConditionalUNet
from jldm.train.objectives import check_objective, make_score_loss

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: ml_collections.ConfigDict) -> ClassConditionalUNet:
    """The class-conditional UNet described by config.model and config.data."""
    m = config.model
    if m.dtype not in _DTYPES:
        raise UserError(f"model.dtype={m.dtype!r} is not known: use one of {sorted(_DTYPES)}")
    levels = len(m.channel_mult)
    res = config.data.resolution
    if res % 2 ** (levels - 1):
        raise UserError(
            f"data.resolution={res} is not divisible by the UNet's downsampling "
            f"{2 ** (levels - 1)}: pick a multiple of it or change model.channel_mult"
        )
    for level in m.attention_levels:
        if not 0 <= level < levels:
            raise UserError(f"model.attention_levels has {level}: levels are 0..{levels - 1}")
    unet = dict(
        channels=m.channels,
        channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks,
        attention_levels=tuple(m.attention_levels),
        num_heads=m.num_heads,
        transformer_depth=m.transformer_depth,
        norm_groups=m.norm_groups,
        dropout=m.dropout,
        use_linear_projection=m.use_linear_projection,
    )
    return ClassConditionalUNet(
        unet=unet,
        num_classes=config.data.num_classes,
        context_dim=m.context_dim,
        context_tokens=m.context_tokens,
        dtype=_DTYPES[m.dtype],
    )


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """The noise schedule of config.diffusion."""
    f = config.diffusion
    try:
        return make_schedule(f.schedule, f.timesteps, f.beta_start, f.beta_end)
    except ValueError as e:
        raise UserError(f"diffusion.schedule: {e}") from None


def build_loss(config: ml_collections.ConfigDict, model: ClassConditionalUNet):
    """loss_fn(params, rng, batch) -> (loss, metrics) for config.diffusion."""
    check_objective(config)
    if config.diffusion.objective != "ddpm":
        return make_score_loss(config, model)
    if config.diffusion.prediction not in ("eps", "x0", "v"):
        raise UserError(f"diffusion.prediction={config.diffusion.prediction!r}: use eps, x0 or v")

    def apply_fn(params, x, t, labels, train, rngs):
        return model.apply({"params": params}, x, t, labels, train, rngs=rngs)

    return make_ddpm_loss(
        apply_fn,
        build_schedule(config),
        config.diffusion.prediction,
        null_label=config.data.num_classes,
        cond_drop=config.diffusion.cond_drop,
    )
