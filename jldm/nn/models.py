"""Whole denoisers: a condition encoder feeding a UNet through cross-attention."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.conditioning import ClassEmbedder
from jldm.nn.text_encoder import CLIPTextEncoder
from jldm.nn.unet import UNet


class ClassConditionalUNet(nn.Module):
    """eps(x_t, t | y) with y a class label (num_classes = null). x: [B,H,W,C] -> [B,H,W,C]."""

    unet: dict[str, Any]
    num_classes: int
    context_dim: int
    context_tokens: int = 1
    out_channels: int | None = None  # default x's channels; fewer when x carries a condition
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array, train: bool = False
    ) -> jax.Array:
        context = ClassEmbedder(
            self.num_classes,
            self.context_dim,
            self.context_tokens,
            dtype=self.dtype,
            name="class_embedder",
        )(labels)
        out = self.out_channels or x.shape[-1]
        return UNet(out_channels=out, dtype=self.dtype, name="unet", **self.unet)(
            x, t, context, None, train
        )


class TextConditionalUNet(nn.Module):
    """eps(x_t, t | prompt): a CLIP-style text encoder's hidden states are the cross-attention
    context, pad tokens masked out (mask_pads) or attended to like any token, as Stable
    Diffusion's UNet does. x: [B,H,W,C], t: [B], ids: [B,L] int -> [B,H,W,out]."""

    unet: dict[str, Any]
    text: dict[str, Any]
    pad_id: int = 0
    out_channels: int | None = None
    mask_pads: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, ids: jax.Array, train: bool = False
    ) -> jax.Array:
        mask = (ids != self.pad_id) if self.mask_pads else None
        context = CLIPTextEncoder(dtype=self.dtype, name="text_encoder", **self.text)(
            ids, None if mask is None else mask.astype(jnp.int32)
        ).last_hidden_state
        out = self.out_channels or x.shape[-1]
        return UNet(out_channels=out, dtype=self.dtype, name="unet", **self.unet)(
            x, t, context, mask, train
        )
