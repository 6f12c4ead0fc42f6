"""Whole denoisers: a condition encoder feeding a UNet through cross-attention."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.conditioning import ClassEmbedder
from jldm.nn.unet import UNet


class ClassConditionalUNet(nn.Module):
    """eps(x_t, t | y) with y a class label (num_classes = null). x: [B,H,W,C] -> [B,H,W,C]."""

    unet: dict[str, Any]
    num_classes: int
    context_dim: int
    context_tokens: int = 1
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
        return UNet(out_channels=x.shape[-1], dtype=self.dtype, name="unet", **self.unet)(
            x, t, context, None, train
        )
