"""Condition encoders tau(y): each maps a condition to a context sequence for cross-attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.layers import Dtype


class ClassEmbedder(nn.Module):
    """Class label -> `tokens` context vectors. labels: [B] int -> [B, tokens, dim].

    Label `num_classes` is the null condition used by classifier-free guidance.
    """

    num_classes: int
    dim: int
    tokens: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        table = nn.Embed(
            self.num_classes + 1, self.tokens * self.dim, dtype=self.dtype, name="embedding"
        )
        emb = table(labels)
        return nn.LayerNorm(dtype=self.dtype, name="norm")(
            emb.reshape(labels.shape[0], self.tokens, self.dim)
        )
