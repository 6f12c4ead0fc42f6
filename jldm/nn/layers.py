"""UNet building blocks, named like the Stable Diffusion UNet so its weights map one to one."""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.functional import group_norm, silu, upsample_conv

Dtype = Any


class GroupNorm(nn.Module):
    """GroupNorm over the spatial axes and channel groups of x [B, ..., C] -> dtype.

    nn.GroupNorm's parameters (scale, bias: [C]) and results (float32 statistics and
    normalisation, output cast to dtype); on XLA:CPU computed with per-channel sums and a
    hand-written gradient, which it runs several times faster (see group_norm).
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"{self.num_groups} groups do not divide {c} channels")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding, cosines first as in Stable Diffusion. t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features -> MLP. t: [B] -> [B, dim]."""

    in_dim: int
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        h = timestep_embedding(t, self.in_dim).astype(self.dtype)
        h = nn.Dense(self.dim, dtype=self.dtype, name="linear_1")(h)
        return nn.Dense(self.dim, dtype=self.dtype, name="linear_2")(silu(h))


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, time embedding (if any) between. x: [B,H,W,C] -> [B,H,W,out]."""

    out_channels: int
    groups: int = 32
    dropout: float = 0.0
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, temb: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """temb: [B, D], or None for blocks without a time input (the autoencoder's)."""
        h = GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name="norm1")(x)
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(silu(h))
        if temb is not None:
            t = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(silu(temb))
            h = h + t[:, None, None, :]
        h = GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name="norm2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(silu(h))
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv1x1(self.out_channels, dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv. x: [B,H,W,C] -> [B,H/2,W/2,C]."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Symmetric padding, as in Stable Diffusion's stride-2 conv ("SAME" would pad 0 and 1).
        pad = ((1, 1), (1, 1))
        return nn.Conv(
            self.channels, (3, 3), strides=2, padding=pad, dtype=self.dtype, name="conv"
        )(x)


class _KernelConv(nn.Module):
    """nn.Conv's parameters (kernel [size, size, in, features], bias [features]: the same names
    and initialisers) applied by op(x, kernel), for convolutions written another way."""

    features: int
    dtype: Dtype = jnp.float32
    size: ClassVar[int] = 1

    def op(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.size, self.size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), shape[-1:], jnp.float32)
        y = self.op(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class Conv1x1(_KernelConv):
    """nn.Conv with a 1x1 kernel (same parameters) as a matmul over the channels, which
    XLA:CPU runs faster than a 1x1 convolution. x: [..., C] -> [..., features]."""

    def op(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jnp.dot(x, kernel[0, 0])


class _UpsampleConv(_KernelConv):
    """The 3x3 conv of Upsample; on XLA:CPU without building the upsampled image (upsample_conv)."""

    size: ClassVar[int] = 3

    def op(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return upsample_conv(x, kernel)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv. x: [B,H,W,C] -> [B,2H,2W,C]."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _UpsampleConv(self.channels, dtype=self.dtype, name="conv")(x)


class Attention(nn.Module):
    """Multi-head attention; self-attention when context is None. x: [B,T,D] -> [B,T,D]."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """context: [B,S,Dc]; mask: [B,S] bool, True where a context token may be attended."""
        context = x if context is None else context
        inner = self.heads * self.head_dim
        dense = lambda name: nn.Dense(inner, use_bias=False, dtype=self.dtype, name=name)
        q = dense("to_q")(x).reshape(*x.shape[:2], self.heads, self.head_dim)
        k = dense("to_k")(context).reshape(*context.shape[:2], self.heads, self.head_dim)
        v = dense("to_v")(context).reshape(*context.shape[:2], self.heads, self.head_dim)
        if mask is not None:
            mask = mask[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        out = out.reshape(*x.shape[:2], inner)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(out)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion. x: [B,T,D] -> [B,T,D]."""

    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inner = x.shape[-1] * self.mult
        h, gate = jnp.split(nn.Dense(2 * inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="out")(h * nn.gelu(gate, False))


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context, feed-forward; pre-norm residuals."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: [B,T,D], context: [B,S,Dc] -> [B,T,D]."""
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        attn = lambda name: Attention(self.heads, self.head_dim, dtype=self.dtype, name=name)
        x = x + attn("attn1")(norm("norm1")(x))
        x = x + attn("attn2")(norm("norm2")(x), context, mask)
        return x + FeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map; Q from the map, K and V from the context.

    x: [B,H,W,C], context: [B,S,Dc], mask: [B,S] or None -> [B,H,W,C].
    """

    heads: int
    depth: int = 1
    groups: int = 32
    use_linear_projection: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None
    ) -> jax.Array:
        b, h, w, c = x.shape
        head_dim = c // self.heads
        y = GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        # 1x1 conv (SD 1.x) and linear (SD 2.x) projections are the same map; both layouts kept
        # so imported weights keep their shapes.
        if self.use_linear_projection:
            y = nn.Dense(c, dtype=self.dtype, name="proj_in")(y.reshape(b, h * w, c))
        else:
            y = Conv1x1(c, dtype=self.dtype, name="proj_in")(y).reshape(b, h * w, c)
        for i in range(self.depth):
            y = TransformerBlock(
                self.heads, head_dim, dtype=self.dtype, name=f"transformer_blocks_{i}"
            )(y, context, mask)
        if self.use_linear_projection:
            y = nn.Dense(c, dtype=self.dtype, name="proj_out")(y).reshape(b, h, w, c)
        else:
            y = Conv1x1(c, dtype=self.dtype, name="proj_out")(y.reshape(b, h, w, c))
        return x + y
