"""The conditional UNet: ResBlocks, SpatialTransformers, skip connections; SD-compatible names.

Parameter paths follow the Stable Diffusion UNet (`down_blocks_0/resnets_1/conv1`,
`mid_block/attentions_0/transformer_blocks_0/attn2/to_k`, ...), so imported weights map by name.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.functional import silu
from jldm.nn.layers import (
    Downsample,
    Dtype,
    GroupNorm,
    ResnetBlock,
    SpatialTransformer,
    TimestepEmbedding,
    Upsample,
)

# Recomputed in the backward pass; same parameter names. `train` (argument 3, self counted) is
# a Python bool that picks the dropout branch, so it must stay static.
_RematResnetBlock = nn.remat(ResnetBlock, static_argnums=(3,))
_RematSpatialTransformer = nn.remat(SpatialTransformer)


class _Block(nn.Module):
    """Shared fields of the down, mid and up blocks."""

    channels: int
    num_layers: int
    attention: bool
    heads: int
    transformer_depth: int = 1
    groups: int = 32
    dropout: float = 0.0
    use_linear_projection: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    def resnet(self, i: int) -> ResnetBlock:
        cls = _RematResnetBlock if self.remat else ResnetBlock
        return cls(self.channels, self.groups, self.dropout, dtype=self.dtype, name=f"resnets_{i}")

    def transformer(self, i: int) -> SpatialTransformer:
        cls = _RematSpatialTransformer if self.remat else SpatialTransformer
        return cls(
            self.heads,
            self.transformer_depth,
            self.groups,
            self.use_linear_projection,
            dtype=self.dtype,
            name=f"attentions_{i}",
        )


class DownBlock(_Block):
    """ResBlocks (+ transformers), then an optional stride-2 downsampler; returns the skips."""

    add_downsample: bool = True

    @nn.compact
    def __call__(self, x, temb, context, mask, train: bool):
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(i)(x, temb, train)
            if self.attention:
                x = self.transformer(i)(x, context, mask)
            skips.append(x)
        if self.add_downsample:
            x = Downsample(self.channels, dtype=self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class MidBlock(_Block):
    """ResBlock, transformer, ResBlock at the lowest resolution."""

    @nn.compact
    def __call__(self, x, temb, context, mask, train: bool):
        x = self.resnet(0)(x, temb, train)
        if self.attention:
            x = self.transformer(0)(x, context, mask)
        return self.resnet(1)(x, temb, train)


class UpBlock(_Block):
    """ResBlocks over [x, skip] concatenations (+ transformers), then an optional upsampler."""

    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips, temb, context, mask, train: bool):
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.resnet(i)(x, temb, train)
            if self.attention:
                x = self.transformer(i)(x, context, mask)
        if self.add_upsample:
            x = Upsample(self.channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class UNet(nn.Module):
    """Noise/score network eps(x_t, t | context). x: [B,H,W,C], t: [B], context: [B,S,Dc]."""

    out_channels: int
    channels: int = 64
    channel_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: Sequence[int] = (1,)
    # One count for every level, or one per level (diffusers' attention_head_dim); the mid block
    # uses the last level's.
    num_heads: int | Sequence[int] = 4
    head_dim: int = 0  # when > 0, heads = channels // head_dim per level (SD 2.x style)
    transformer_depth: int = 1
    mid_attention: bool = True
    norm_groups: int = 32
    dropout: float = 0.0
    use_linear_projection: bool = False
    # Recompute each ResBlock and transformer in the backward pass instead of keeping its
    # activations: less memory for one more forward. Parameter names do not change.
    remat: bool = False
    dtype: Dtype = jnp.float32

    def _heads(self, level: int, ch: int) -> int:
        if self.head_dim > 0:
            return ch // self.head_dim
        if not isinstance(self.num_heads, Sequence):
            return self.num_heads
        if len(self.num_heads) != len(self.channel_mult):
            raise ValueError(
                f"num_heads={tuple(self.num_heads)} needs one count per level "
                f"({len(self.channel_mult)} in channel_mult={tuple(self.channel_mult)})"
            )
        return self.num_heads[level]

    def _block_kwargs(self, level: int, attention: bool) -> dict:
        ch = self.channels * self.channel_mult[level]
        return dict(
            channels=ch,
            attention=attention,
            heads=self._heads(level, ch),
            transformer_depth=self.transformer_depth,
            groups=self.norm_groups,
            dropout=self.dropout,
            use_linear_projection=self.use_linear_projection,
            remat=self.remat,
            dtype=self.dtype,
        )

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        context: jax.Array,
        mask: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        levels = len(self.channel_mult)
        temb = TimestepEmbedding(
            self.channels, 4 * self.channels, dtype=self.dtype, name="time_embedding"
        )(t)
        context = context.astype(self.dtype)
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        skips = [h]
        for level in range(levels):
            kw = self._block_kwargs(level, level in self.attention_levels)
            h, s = DownBlock(
                num_layers=self.num_res_blocks,
                add_downsample=level < levels - 1,
                name=f"down_blocks_{level}",
                **kw,
            )(h, temb, context, mask, train)
            skips += s
        kw = self._block_kwargs(levels - 1, self.mid_attention)
        h = MidBlock(num_layers=2, name="mid_block", **kw)(h, temb, context, mask, train)
        for i, level in enumerate(reversed(range(levels))):
            kw = self._block_kwargs(level, level in self.attention_levels)
            h = UpBlock(
                num_layers=self.num_res_blocks + 1,
                add_upsample=level > 0,
                name=f"up_blocks_{i}",
                **kw,
            )(h, skips, temb, context, mask, train)
        h = GroupNorm(self.norm_groups, epsilon=1e-5, dtype=self.dtype, name="conv_norm_out")(h)
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_out")(silu(h))
        return h.astype(jnp.float32)
