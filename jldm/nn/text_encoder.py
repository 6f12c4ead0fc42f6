"""CLIP-style text transformer, laid out like transformers' CLIPTextModel.

Parameter paths match CLIPTextModel's `text_model.*` state dict with dots as slashes
(`embeddings/token_embedding/embedding`, `encoder/layers_3/self_attn/q_proj/kernel`,
`encoder/layers_3/mlp/fc1/bias`, `final_layer_norm/scale`, ...), so its weights import by name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jldm.nn.layers import Dtype


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation (SD 1.x text encoder)."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
}


@struct.dataclass
class TextEncoderOutput:
    """last_hidden_state, penultimate: [B, L, D]; pooled: [B, D] at each sequence's EOS."""

    last_hidden_state: jax.Array
    penultimate: jax.Array
    pooled: jax.Array


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biases. x: [B,L,D], mask: [B,1,L,L] bool -> [B,L,D]."""

    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, n, d = x.shape
        split = lambda name: nn.Dense(d, dtype=self.dtype, name=name)(x).reshape(
            b, n, self.heads, d // self.heads
        )
        q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
        out = jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(b, n, d)
        return nn.Dense(d, dtype=self.dtype, name="out_proj")(out)


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2. x: [B,L,D] -> [B,L,D]."""

    intermediate: int
    activation: str = "quick_gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(self.intermediate, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(_ACTIVATIONS[self.activation](h))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer. x: [B,L,D], mask: [B,1,L,L] -> [B,L,D]."""

    heads: int
    intermediate: int
    activation: str = "quick_gelu"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
        x = x + CLIPAttention(self.heads, dtype=self.dtype, name="self_attn")(
            norm("layer_norm1")(x), mask
        )
        mlp = CLIPMLP(self.intermediate, self.activation, dtype=self.dtype, name="mlp")
        return x + mlp(norm("layer_norm2")(x))


class CLIPEmbeddings(nn.Module):
    """Token plus learned position embeddings. ids: [B, L] -> [B, L, D]."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        tok = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype, name="token_embedding")
        pos = nn.Embed(
            self.max_position_embeddings,
            self.hidden_size,
            dtype=self.dtype,
            name="position_embedding",
        )
        return tok(ids) + pos(jnp.arange(ids.shape[1])[None])


class CLIPEncoder(nn.Module):
    """The layer stack. x: [B,L,D] -> [embeddings, layer 1 output, ..., layer N output]."""

    num_layers: int
    heads: int
    intermediate: int
    activation: str = "quick_gelu"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> list[jax.Array]:
        hidden = [x]
        for i in range(self.num_layers):
            layer = CLIPEncoderLayer(
                self.heads,
                self.intermediate,
                self.activation,
                self.eps,
                self.dtype,
                name=f"layers_{i}",
            )
            hidden.append(layer(hidden[-1], mask))
        return hidden


class CLIPTextEncoder(nn.Module):
    """Token ids -> hidden states. ids: [B, L] int, attention_mask: [B, L] (1 = token, 0 = pad).

    Defaults are SD 1.x's text encoder (CLIP ViT-L/14: 12 layers, width 768, quick_gelu);
    SD 2.x's OpenCLIP ViT-H is width 1024, 16 heads, 24 layers, gelu, and uses `penultimate`.
    eos_token_id None pools at argmax(ids) (OpenAI's vocabulary puts EOS at the largest id);
    otherwise at the first position holding eos_token_id.
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 77
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int | None = None
    causal: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> TextEncoderOutput:
        """ids: [B, L], attention_mask: [B, L] or None -> TextEncoderOutput (float32)."""
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: use one of {sorted(_ACTIVATIONS)}")
        b, n = ids.shape
        if n > self.max_position_embeddings:
            raise ValueError(f"{n} tokens > max_position_embeddings={self.max_position_embeddings}")
        h = CLIPEmbeddings(
            self.vocab_size,
            self.hidden_size,
            self.max_position_embeddings,
            self.dtype,
            name="embeddings",
        )(ids)
        mask = jnp.ones((b, 1, n, n), bool)
        if self.causal:
            mask = mask & jnp.tril(jnp.ones((n, n), bool))[None, None]
        if attention_mask is not None:
            # Padding keys are hidden from every query; padded queries still see real tokens.
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        hidden = CLIPEncoder(
            self.num_layers,
            self.num_heads,
            self.intermediate_size,
            self.activation,
            self.layer_norm_eps,
            dtype=self.dtype,
            name="encoder",
        )(h, mask)
        h = hidden[-1]
        final_norm = nn.LayerNorm(
            epsilon=self.layer_norm_eps, dtype=self.dtype, name="final_layer_norm"
        )
        last = final_norm(h)
        # SD 2.x conditions on the layer before the last, passed through the final LayerNorm.
        penultimate = final_norm(hidden[-2])
        if self.eos_token_id is None:
            eos = jnp.argmax(ids, axis=-1)
        else:
            eos = jnp.argmax(ids == self.eos_token_id, axis=-1)
        pooled = last[jnp.arange(b), eos]
        f32 = lambda a: a.astype(jnp.float32)
        return TextEncoderOutput(f32(last), f32(penultimate), f32(pooled))
