"""Config -> the denoising network: UNet, what it denoises (shape), its conditions and inputs."""

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build.text import text_tokenizer
from jldm.errors import UserError
from jldm.nn.models import ClassConditionalUNet, TextConditionalUNet
from jldm.runs.kinds import kind_of

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def is_latent(config: ml_collections.ConfigDict) -> bool:
    """A latent diffusion config: the UNet works on a stage-1 autoencoder's latents."""
    return kind_of(config) == "latent"


def model_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(resolution, channels) of what the UNet denoises: pixels, or latents for an LDM."""
    d = config.data
    if not is_latent(config):
        return d.resolution, d.channels
    a = config.stage1
    f = 2 ** (len(a.channel_mult) - 1)
    if d.resolution % f:
        raise UserError(
            f"data.resolution={d.resolution} is not divisible by the autoencoder's downsampling "
            f"{f}: pick a multiple of it or change stage1.channel_mult"
        )
    return d.resolution // f, a.latent_channels


def dummy_condition(config: ml_collections.ConfigDict) -> jnp.ndarray:
    """One condition for shape inference: a class id [1] or a token sequence [1, L]."""
    if config.model.get("conditioning", "class") == "text":
        return jnp.zeros((1, config.text.max_length), jnp.int32)
    return jnp.zeros((1,), jnp.int32)


def build_model(config: ml_collections.ConfigDict):
    """The class- or text-conditional UNet described by config.model (and config.text)."""
    m = config.model
    if m.dtype not in _DTYPES:
        raise UserError(f"model.dtype={m.dtype!r} is not known: use one of {sorted(_DTYPES)}")
    conditioning = m.get("conditioning", "class")
    if conditioning not in ("class", "text"):
        raise UserError(f"model.conditioning={conditioning!r}: use class or text")
    levels = len(m.channel_mult)
    res, _ = model_shape(config)
    if res % 2 ** (levels - 1):
        what = "latent resolution" if is_latent(config) else "data.resolution"
        raise UserError(
            f"{what}={res} is not divisible by the UNet's downsampling "
            f"{2 ** (levels - 1)}: pick a multiple of it or change model.channel_mult"
        )
    for level in m.attention_levels:
        if not 0 <= level < levels:
            raise UserError(f"model.attention_levels has {level}: levels are 0..{levels - 1}")
    check_groups("model", m.channels, m.channel_mult, m.norm_groups)
    _check_heads(m)
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
        remat=m.get("remat", False),  # runs saved before the option existed have no key
    )
    if conditioning == "text":
        t = config.text
        if t.width % t.heads:
            raise UserError(
                f"text.heads={t.heads} does not divide text.width={t.width}: pick a divisor"
            )
        text = dict(
            vocab_size=text_tokenizer(config).vocab_size,
            hidden_size=t.width,
            intermediate_size=4 * t.width,
            num_layers=t.layers,
            num_heads=t.heads,
            max_position_embeddings=t.max_length,
        )
        return TextConditionalUNet(unet=unet, text=text, dtype=_DTYPES[m.dtype])
    return ClassConditionalUNet(
        unet=unet,
        out_channels=model_shape(config)[1],
        num_classes=config.data.num_classes,
        context_dim=m.context_dim,
        context_tokens=m.context_tokens,
        dtype=_DTYPES[m.dtype],
    )


def check_groups(section: str, channels: int, channel_mult, groups: int) -> None:
    """GroupNorm's groups must divide every level's channels (channels x channel_mult)."""
    for level, mult in enumerate(channel_mult):
        if (channels * mult) % groups:
            raise UserError(
                f"{section}.norm_groups={groups} does not divide the {channels * mult} channels "
                f"of level {level} ({section}.channels={channels} x channel_mult[{level}]="
                f"{mult}): pick a divisor of every level's channels"
            )


def _check_heads(m: ml_collections.ConfigDict) -> None:
    """Attention heads must split the channels of each level with attention (and the middle
    block's, the last level's) evenly: a remainder would be dropped from every head."""
    levels = len(m.channel_mult)
    heads = m.num_heads
    for level in sorted({*m.attention_levels, levels - 1}):
        n = heads if isinstance(heads, int) else heads[level]
        ch = m.channels * m.channel_mult[level]
        if ch % n:
            raise UserError(
                f"model.num_heads={heads} does not divide the {ch} channels of level {level}, "
                f"which has attention{' (the middle block)' if level == levels - 1 else ''}: "
                "pick a divisor"
            )


def null_condition(config: ml_collections.ConfigDict):
    """The unconditional input: the null class id, or the empty prompt's token ids [L]."""
    if config.model.get("conditioning", "class") == "text":
        return text_tokenizer(config).encode([""], config.text.max_length)[0][0]
    return config.data.num_classes


def sr_factor(config: ml_collections.ConfigDict) -> int:
    """Super-resolution factor f: the UNet also sees the image at 1/f resolution (1: off)."""
    f = config.model.get("low_res_factor", 1)
    if f > 1 and (config.data.resolution % f or is_latent(config)):
        raise UserError(
            f"model.low_res_factor={f} needs a pixel-space run whose data.resolution is a "
            "multiple of it"
        )
    return f


def downsample(images: jnp.ndarray, factor: int) -> jnp.ndarray:
    """Area-average images [N,H,W,C] by factor -> [N,H/f,W/f,C]: the super-resolution input."""
    n, h, w, c = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(low: jnp.ndarray, resolution: int) -> jnp.ndarray:
    """Bilinear resize of low-resolution images [N,h,w,C] to [N,R,R,C], the UNet's extra input."""
    n, _, _, c = low.shape
    return jax.image.resize(low, (n, resolution, resolution, c), "linear")


def init_params(model, config: ml_collections.ConfigDict, key: jax.Array):
    """Fresh params of the conditional UNet for the shape it denoises (pixels or latents)."""
    res, ch = model_shape(config)
    x = jnp.zeros((1, res, res, ch * (2 if sr_factor(config) > 1 else 1)), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.int32), dummy_condition(config))["params"]
