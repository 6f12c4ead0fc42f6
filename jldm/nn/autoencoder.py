"""The KL autoencoder of latent diffusion, with the Stable Diffusion VAE's parameter names.

Parameter paths follow diffusers' AutoencoderKL (`encoder/down_blocks_0/resnets_1/conv1`,
`encoder/mid_block/attentions_0/to_q`, `decoder/up_blocks_0/upsamplers_0/conv`, `quant_conv`,
...), so an SD VAE folder maps by name once kernels are transposed to NHWC layout.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jldm.nn.layers import Dtype, ResnetBlock, Upsample

# The SD VAE normalises with eps 1e-6 everywhere (the UNet uses 1e-5).
_EPS = 1e-6


@struct.dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); a pytree, so it passes through jit and apply."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """moments: [..., 2C] (mean then log-variance) -> posterior over [..., C]."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        # The same clip as SD: keeps exp(logvar) finite early in training.
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def var(self) -> jax.Array:
        """exp(logvar): [..., C]."""
        return jnp.exp(self.logvar)

    @property
    def std(self) -> jax.Array:
        """exp(logvar / 2): [..., C]."""
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """Reparameterised draw z = mean + std * eps, eps ~ N(0, I): [..., C]."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        """The posterior mean: [..., C]."""
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over all but the batch axis: [B]."""
        axes = tuple(range(1, self.mean.ndim))
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - self.logvar - 1.0, axis=axes)


class VAEAttention(nn.Module):
    """Single-head self-attention over the pixels, residual. x: [B,H,W,C] -> [B,H,W,C]."""

    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = nn.GroupNorm(self.groups, epsilon=_EPS, dtype=self.dtype, name="group_norm")(x)
        y = y.reshape(b, h * w, 1, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(y) for n in ("to_q", "to_k", "to_v"))
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, h * w, c)
        out = nn.Dense(c, dtype=self.dtype, name="to_out_0")(out)
        return x + out.reshape(b, h, w, c)


class VAEDownsample(nn.Module):
    """Stride-2 3x3 conv after padding one row and column at the end, as the SD VAE does.

    x: [B,H,W,C] -> [B,H/2,W/2,C] (the UNet's Downsample pads symmetrically instead).
    """

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return nn.Conv(
            self.channels, (3, 3), strides=2, padding="VALID", dtype=self.dtype, name="conv"
        )(x)


def _resnet(channels: int, groups: int, dropout: float, dtype: Dtype, name: str) -> ResnetBlock:
    return ResnetBlock(channels, groups, dropout, eps=_EPS, dtype=dtype, name=name)


class VAEMidBlock(nn.Module):
    """ResBlock, self-attention, ResBlock at the lowest resolution. x: [B,h,w,C] -> same."""

    channels: int
    groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _resnet(self.channels, self.groups, self.dropout, self.dtype, "resnets_0")(
            x, None, train
        )
        x = VAEAttention(self.groups, dtype=self.dtype, name="attentions_0")(x)
        return _resnet(self.channels, self.groups, self.dropout, self.dtype, "resnets_1")(
            x, None, train
        )


class DownEncoderBlock(nn.Module):
    """num_layers ResBlocks, then an optional stride-2 downsampler."""

    channels: int
    num_layers: int
    add_downsample: bool
    groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = _resnet(self.channels, self.groups, self.dropout, self.dtype, f"resnets_{i}")(
                x, None, train
            )
        if self.add_downsample:
            x = VAEDownsample(self.channels, dtype=self.dtype, name="downsamplers_0")(x)
        return x


class UpDecoderBlock(nn.Module):
    """num_layers ResBlocks (no skips: the decoder is not a UNet), then an optional upsampler."""

    channels: int
    num_layers: int
    add_upsample: bool
    groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = _resnet(self.channels, self.groups, self.dropout, self.dtype, f"resnets_{i}")(
                x, None, train
            )
        if self.add_upsample:
            x = Upsample(self.channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """Image -> posterior moments. x: [B,H,W,C] -> [B, H/f, W/f, 2*latent_channels].

    f = 2^(len(channel_mult) - 1); the last axis holds the mean, then the log-variance.
    """

    latent_channels: int = 4
    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.channel_mult)
        kw = dict(groups=self.norm_groups, dropout=self.dropout, dtype=self.dtype)
        h = nn.Conv(self.channels * self.channel_mult[0], (3, 3), dtype=self.dtype, name="conv_in")(
            x.astype(self.dtype)
        )
        for level, mult in enumerate(self.channel_mult):
            h = DownEncoderBlock(
                self.channels * mult,
                self.num_res_blocks,
                add_downsample=level < levels - 1,
                name=f"down_blocks_{level}",
                **kw,
            )(h, train)
        h = VAEMidBlock(self.channels * self.channel_mult[-1], name="mid_block", **kw)(h, train)
        h = nn.GroupNorm(self.norm_groups, epsilon=_EPS, dtype=self.dtype, name="conv_norm_out")(h)
        h = nn.Conv(2 * self.latent_channels, (3, 3), dtype=self.dtype, name="conv_out")(nn.silu(h))
        return h


class Decoder(nn.Module):
    """Latent -> image. z: [B,h,w,latent_channels] -> [B, h*f, w*f, out_channels]."""

    out_channels: int = 3
    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.channel_mult)
        kw = dict(groups=self.norm_groups, dropout=self.dropout, dtype=self.dtype)
        top = self.channels * self.channel_mult[-1]
        h = nn.Conv(top, (3, 3), dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
        h = VAEMidBlock(top, name="mid_block", **kw)(h, train)
        for i, level in enumerate(reversed(range(levels))):
            h = UpDecoderBlock(
                self.channels * self.channel_mult[level],
                self.num_res_blocks + 1,
                add_upsample=level > 0,
                name=f"up_blocks_{i}",
                **kw,
            )(h, train)
        h = nn.GroupNorm(self.norm_groups, epsilon=_EPS, dtype=self.dtype, name="conv_norm_out")(h)
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_out")(nn.silu(h))
        return h


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder: encode -> DiagonalGaussian over latents, decode -> image.

    x: [B,H,W,C] <-> z: [B, H/f, W/f, latent_channels], f = 2^(len(channel_mult) - 1).
    Latent diffusion scales z by a constant before diffusing (SD 1.x/2.x: 0.18215); that
    constant belongs to the diffusion config, not to this module.
    """

    out_channels: int = 3
    latent_channels: int = 4
    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = dict(
            channels=self.channels,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            norm_groups=self.norm_groups,
            dropout=self.dropout,
            dtype=self.dtype,
        )
        self.encoder = Encoder(self.latent_channels, **kw)
        self.decoder = Decoder(self.out_channels, **kw)
        self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1), dtype=self.dtype)
        self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, x: jax.Array, train: bool = False) -> DiagonalGaussian:
        """x: [B,H,W,C] -> posterior with mean, logvar: [B, H/f, W/f, latent_channels]."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x, train)))

    def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
        """z: [B,h,w,latent_channels] -> float32 image [B, h*f, w*f, out_channels]."""
        return self.decoder(self.post_quant_conv(z.astype(self.dtype)), train).astype(jnp.float32)

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None, train: bool = False
    ) -> tuple[jax.Array, DiagonalGaussian]:
        """x: [B,H,W,C] -> (reconstruction [B,H,W,out], posterior); z ~ q given a key, else mean."""
        posterior = self.encode(x, train)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z, train), posterior
