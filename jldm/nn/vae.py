"""A small convolutional VAE: images -> q(z|x) over a flat latent vector -> decoder outputs.

Smaller than the latent-diffusion autoencoder (no GroupNorm, attention or ResBlocks) and with
a vector latent rather than a latent image, so the prior N(0, I) is over latent_size numbers.
With num_classes > 0 both networks also see the class label (a conditional VAE,
q(z|x, y) and p(x|z, y)), and sampling from the prior is class-conditional. With class_prior
the prior is learned per class too, p(z|y) = N(mu_y, diag(s_y^2)), written in standardised
coordinates u = (z - mu_y) / s_y: encode gives q over u and decode takes u, so everything
outside the module keeps the prior N(0, I) and the KL, importance weights and prior draws of
u are those of z under p(z|y) (the map is affine, its Jacobian cancels).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.layers import Dtype


class ConvVAE(nn.Module):
    """x: [B,R,R,C] <-> z: [B, latent_size]; the decoder emits out_channels per pixel.

    The encoder halves the resolution once per entry of channel_mult (stride-2 3x3 convs), so R
    must be divisible by 2^len(channel_mult); the decoder mirrors it with nearest x2 upsampling
    and 3x3 convs. What the decoder's outputs mean (a Gaussian mean, Bernoulli logits, a mean
    and a log-variance) is the likelihood's business, not this module's.
    """

    latent_size: int
    out_channels: int
    resolution: int
    channels: int = 16
    channel_mult: Sequence[int] = (1, 2)
    hidden: int = 256
    num_classes: int = 0
    class_prior: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        widths = [self.channels * m for m in self.channel_mult]
        self.conv_in = nn.Conv(widths[0], (3, 3), dtype=self.dtype)
        self.down = [nn.Conv(w, (3, 3), strides=2, dtype=self.dtype) for w in widths]
        self.enc_hidden = nn.Dense(self.hidden, dtype=self.dtype)
        self.enc_out = nn.Dense(2 * self.latent_size, dtype=self.dtype)
        self.dec_hidden = nn.Dense(self.hidden, dtype=self.dtype)
        low = self.resolution // 2 ** len(widths)
        self.dec_proj = nn.Dense(low * low * widths[-1], dtype=self.dtype)
        self.up = [nn.Conv(w, (3, 3), dtype=self.dtype) for w in reversed(widths)]
        self.conv_out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)
        if self.num_classes > 0:
            self.enc_label = nn.Embed(self.num_classes, self.hidden)
            self.dec_label = nn.Embed(self.num_classes, self.hidden)
        if self.class_prior:
            if self.num_classes == 0:
                raise ValueError("class_prior needs num_classes > 0")
            # Zeros: the prior starts as N(0, I) for every class.
            zeros = nn.initializers.zeros_init()
            self.prior_mean = nn.Embed(self.num_classes, self.latent_size, embedding_init=zeros)
            self.prior_logstd = nn.Embed(self.num_classes, self.latent_size, embedding_init=zeros)

    def _with_label(self, h: jax.Array, embed: str, y: jax.Array | None) -> jax.Array:
        """h [B, hidden] plus the label's embedding (unconditional: h itself)."""
        if self.num_classes == 0:
            return h
        if y is None:
            raise ValueError("a class-conditional VAE needs labels y: [B]")
        return h + getattr(self, embed)(y).astype(h.dtype)

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """x: [B,R,R,C], y: [B] class ids -> (mean, logvar) of q(z|x, y), each [B, latent]
        (class_prior: of q(u|x, y), u = (z - mu_y) / s_y)."""
        h = nn.silu(self.conv_in(x.astype(self.dtype)))
        for conv in self.down:
            h = nn.silu(conv(h))
        h = self.enc_hidden(h.reshape(h.shape[0], -1))
        h = nn.silu(self._with_label(h, "enc_label", y))
        mean, logvar = jnp.split(self.enc_out(h).astype(jnp.float32), 2, axis=-1)
        # As the SD autoencoder does: keeps exp(logvar) finite early in training.
        logvar = jnp.clip(logvar, -30.0, 20.0)
        if not self.class_prior:
            return mean, logvar
        mu, logstd = self._prior(y)
        return (mean - mu) * jnp.exp(-logstd), logvar - 2.0 * logstd

    def _prior(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mu_y, log s_y) of the learned class prior, each [B, latent], float32."""
        if y is None:
            raise ValueError("a class-conditional VAE needs labels y: [B]")
        return (
            self.prior_mean(y).astype(jnp.float32),
            self.prior_logstd(y).astype(jnp.float32),
        )

    def decode(self, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """z: [B, latent] (class_prior: u), y: [B] -> float32 outputs [B, R, R, out_channels]."""
        if self.class_prior:
            mu, logstd = self._prior(y)
            z = mu + jnp.exp(logstd) * z.astype(jnp.float32)
        h = self.dec_hidden(z.astype(self.dtype))
        h = nn.silu(self._with_label(h, "dec_label", y))
        h = nn.silu(self.dec_proj(h))
        low = self.resolution // 2 ** len(self.up)
        h = h.reshape(h.shape[0], low, low, -1)
        for conv in self.up:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.silu(conv(h))
        return self.conv_out(h).astype(jnp.float32)

    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Decode the posterior mean: x: [B,R,R,C] -> [B,R,R,out_channels] (creates all params)."""
        return self.decode(self.encode(x, y)[0], y)
