"""Our UNet, AutoencoderKL and CLIP text encoder built from diffusers / transformers config.json
files, and their PyTorch-named weights mapped onto the Flax parameter trees."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jldm.convert.mapping import convert_state_dict, rename_keys
from jldm.errors import UserError
from jldm.nn.autoencoder import AutoencoderKL
from jldm.nn.layers import Dtype
from jldm.nn.text_encoder import CLIPTextEncoder
from jldm.nn.unet import UNet

# Option -> (diffusers' default when the key is absent, the value our modules implement).
_UNET_FIXED = {
    "center_input_sample": (False, False),
    "flip_sin_to_cos": (True, True),
    "freq_shift": (0, 0),
    "downsample_padding": (1, 1),
    "mid_block_scale_factor": (1, 1),
    "act_fn": ("silu", "silu"),
    "norm_eps": (1e-5, 1e-5),
    "class_embed_type": (None, None),
    "addition_embed_type": (None, None),
    "num_class_embeds": (None, None),
    "encoder_hid_dim": (None, None),
    "time_cond_proj_dim": (None, None),
    "time_embedding_type": ("positional", "positional"),
    "time_embedding_dim": (None, None),
    "time_embedding_act_fn": (None, None),
    "timestep_post_act": (None, None),
    "resnet_time_scale_shift": ("default", "default"),
    "resnet_skip_time_act": (False, False),
    "resnet_out_scale_factor": (1.0, 1.0),
    "conv_in_kernel": (3, 3),
    "conv_out_kernel": (3, 3),
    "dual_cross_attention": (False, False),
    "only_cross_attention": (False, False),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn"),
    "attention_type": ("default", "default"),
    "cross_attention_norm": (None, None),
}
_VAE_FIXED = {
    "act_fn": ("silu", "silu"),
    "mid_block_add_attention": (True, True),
    "shift_factor": (None, None),
}
# transformers' hidden_act names -> the text encoder's activation names.
_CLIP_ACT = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


class UNetSpec(NamedTuple):
    """The UNet module plus what its inputs look like: latent channels and context width."""

    model: UNet
    in_channels: int
    context_dim: int
    sample_size: int


class VAESpec(NamedTuple):
    """The autoencoder plus its latent scaling and spatial factor f (image = f * latent size)."""

    model: AutoencoderKL
    in_channels: int
    latent_channels: int
    scaling_factor: float
    factor: int


def _check_fixed(cfg: Mapping, fixed: Mapping, component: str) -> None:
    for key, (default, supported) in fixed.items():
        value = cfg.get(key, default)
        if value != supported:
            raise UserError(
                f"{component}/config.json has {key}={value!r}; jldm converts only {key}="
                f"{supported!r} (Stable Diffusion 1.x/2.x layouts)"
            )


def _per_level(value: Any, levels: int, key: str) -> list:
    if isinstance(value, list | tuple):
        if len(value) != levels:
            raise UserError(f"unet/config.json: {key} has {len(value)} entries for {levels} blocks")
        return list(value)
    return [value] * levels


def _channel_mult(channels: list[int], component: str) -> tuple[int, ...]:
    base = channels[0]
    if any(c % base for c in channels):
        raise UserError(
            f"{component}/config.json: block_out_channels {channels} are not multiples of "
            f"{base}; jldm's blocks are sized as multiples of the first"
        )
    return tuple(c // base for c in channels)


def unet_from_config(cfg: Mapping, dtype: Dtype = jnp.float32) -> UNetSpec:
    """Our UNet for a diffusers UNet2DConditionModel config.json (SD 1.x / 2.x)."""
    _check_fixed(cfg, _UNET_FIXED, "unet")
    down = list(cfg["down_block_types"])
    up = list(cfg["up_block_types"])
    allowed_down = {"CrossAttnDownBlock2D", "DownBlock2D"}
    allowed_up = {"CrossAttnUpBlock2D", "UpBlock2D"}
    if not set(down) <= allowed_down or not set(up) <= allowed_up:
        raise UserError(
            f"unet/config.json has blocks {down} / {up}; jldm converts "
            f"{sorted(allowed_down)} / {sorted(allowed_up)}"
        )
    attention = [t.startswith("CrossAttn") for t in down]
    if [t.startswith("CrossAttn") for t in reversed(up)] != attention:
        raise UserError(
            f"unet/config.json: up blocks {up} do not mirror down blocks {down}; jldm's UNet "
            "puts attention at the same levels on the way down and up"
        )
    channels = list(cfg["block_out_channels"])
    levels = len(channels)
    # diffusers reads attention_head_dim as head counts, one per level (or one for all).
    heads = _per_level(
        cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8),
        levels,
        "attention_head_dim",
    )
    # The mid block uses the last level's count; only levels with attention matter.
    for lvl in sorted({lvl for lvl in range(levels) if attention[lvl]} | {levels - 1}):
        if channels[lvl] % heads[lvl]:
            raise UserError(
                f"unet/config.json: attention_head_dim {heads} gives {heads[lvl]} heads for "
                f"{channels[lvl]} channels at level {lvl}; jldm's UNet needs them to divide"
            )
    depth = set(_per_level(cfg.get("transformer_layers_per_block", 1), levels, "depth"))
    if len(depth) != 1:
        raise UserError(
            f"unet/config.json: transformer_layers_per_block={sorted(depth)} varies by level; "
            "jldm's UNet uses one depth"
        )
    context_dim = cfg.get("cross_attention_dim", 1280)
    if not isinstance(context_dim, int):
        raise UserError(f"unet/config.json: cross_attention_dim={context_dim!r} must be one int")
    model = UNet(
        out_channels=cfg.get("out_channels", 4),
        channels=channels[0],
        channel_mult=_channel_mult(channels, "unet"),
        num_res_blocks=cfg.get("layers_per_block", 2),
        attention_levels=tuple(lvl for lvl in range(levels) if attention[lvl]),
        num_heads=heads[0] if len(set(heads)) == 1 else tuple(heads),
        transformer_depth=depth.pop(),
        mid_attention=True,
        norm_groups=cfg.get("norm_num_groups", 32),
        dropout=0.0,
        use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        dtype=dtype,
    )
    return UNetSpec(model, cfg.get("in_channels", 4), context_dim, cfg.get("sample_size", 64))


def vae_from_config(cfg: Mapping, dtype: Dtype = jnp.float32) -> VAESpec:
    """Our AutoencoderKL for a diffusers AutoencoderKL config.json."""
    _check_fixed(cfg, _VAE_FIXED, "vae")
    down = set(cfg.get("down_block_types", ["DownEncoderBlock2D"]))
    up = set(cfg.get("up_block_types", ["UpDecoderBlock2D"]))
    if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
        raise UserError(
            f"vae/config.json has blocks {sorted(down)} / {sorted(up)}; jldm converts "
            "DownEncoderBlock2D / UpDecoderBlock2D"
        )
    channels = list(cfg.get("block_out_channels", [64]))
    latent = cfg.get("latent_channels", 4)
    model = AutoencoderKL(
        out_channels=cfg.get("out_channels", 3),
        latent_channels=latent,
        channels=channels[0],
        channel_mult=_channel_mult(channels, "vae"),
        num_res_blocks=cfg.get("layers_per_block", 1),
        norm_groups=cfg.get("norm_num_groups", 32),
        dtype=dtype,
    )
    return VAESpec(
        model,
        cfg.get("in_channels", 3),
        latent,
        float(cfg.get("scaling_factor", 0.18215)),
        2 ** (len(channels) - 1),
    )


def text_encoder_from_config(cfg: Mapping, dtype: Dtype = jnp.float32) -> CLIPTextEncoder:
    """Our CLIPTextEncoder for a transformers CLIPTextModel config.json."""
    arch = cfg.get("architectures") or ["CLIPTextModel"]
    if arch[0] != "CLIPTextModel":
        raise UserError(f"text_encoder/config.json is a {arch[0]}; jldm converts CLIPTextModel")
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in _CLIP_ACT:
        raise UserError(
            f"text_encoder/config.json has hidden_act={act!r}; jldm supports {sorted(_CLIP_ACT)}"
        )
    eos = cfg.get("eos_token_id", 2)
    return CLIPTextEncoder(
        vocab_size=cfg.get("vocab_size", 49408),
        hidden_size=cfg.get("hidden_size", 512),
        intermediate_size=cfg.get("intermediate_size", 2048),
        num_layers=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 8),
        max_position_embeddings=cfg.get("max_position_embeddings", 77),
        activation=_CLIP_ACT[act],
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        # transformers keeps OpenAI CLIP's rule for the legacy eos id 2: pool at argmax(ids),
        # because that vocabulary puts <|endoftext|> at the largest id.
        eos_token_id=None if eos == 2 else eos,
        dtype=dtype,
    )


def abstract_unet(spec: UNetSpec) -> Any:
    """Shapes of the UNet's params (nothing allocated)."""
    x = jnp.zeros((1, 8, 8, spec.in_channels))
    ctx = jnp.zeros((1, 1, spec.context_dim))
    init = lambda: spec.model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), ctx)["params"]
    return jax.eval_shape(init)


def abstract_vae(spec: VAESpec) -> Any:
    """Shapes of the autoencoder's params (nothing allocated)."""
    x = jnp.zeros((1, 2 * spec.factor, 2 * spec.factor, spec.in_channels))
    return jax.eval_shape(lambda: spec.model.init(jax.random.PRNGKey(0), x)["params"])


def abstract_text_encoder(model: CLIPTextEncoder) -> Any:
    """Shapes of the text encoder's params (nothing allocated)."""
    ids = jnp.zeros((1, model.max_position_embeddings), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])


_UNET_RENAMES = (("ff.proj", "ff.net.0.proj"), ("ff.out", "ff.net.2"))
# Older diffusers VAEs name the mid-block attention projections like this.
_VAE_LEGACY = (
    (r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
    (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
    (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
    (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out.0."),
)


def convert_unet(tensors: Mapping[str, np.ndarray], spec: UNetSpec, source: str = "unet") -> dict:
    """diffusers UNet2DConditionModel tensors -> our UNet params."""
    return convert_state_dict(tensors, abstract_unet(spec), "unet", source, _UNET_RENAMES)


def convert_vae(
    tensors: Mapping[str, np.ndarray], spec: VAESpec, cfg: Mapping, source: str = "vae"
) -> dict:
    """diffusers AutoencoderKL tensors -> our AutoencoderKL params."""
    tensors = rename_keys(tensors, _VAE_LEGACY)
    # A VAE saved without quant convs is ours with identity 1x1 convs there.
    for name, flag, ch in (
        ("quant_conv", "use_quant_conv", 2 * spec.latent_channels),
        ("post_quant_conv", "use_post_quant_conv", spec.latent_channels),
    ):
        if not cfg.get(flag, True):
            tensors[f"{name}.weight"] = np.eye(ch, dtype=np.float32)[:, :, None, None]
            tensors[f"{name}.bias"] = np.zeros((ch,), np.float32)
    return convert_state_dict(tensors, abstract_vae(spec), "vae", source)


def convert_text_encoder(
    tensors: Mapping[str, np.ndarray], model: CLIPTextEncoder, source: str = "text_encoder"
) -> dict:
    """transformers CLIPTextModel tensors -> our CLIPTextEncoder params."""
    prefix = "text_model."
    stripped = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    return convert_state_dict(
        stripped,
        abstract_text_encoder(model),
        "text_encoder",
        source,
        ignore=(r"(^|\.)position_ids$",),
    )
