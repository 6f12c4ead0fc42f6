"""PatchGAN discriminator: one real/fake logit per overlapping image patch."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.layers import Dtype


class PatchDiscriminator(nn.Module):
    """Strided 4x4 conv stack. x: [B,H,W,C] -> logits [B, H/2^n - 2, W/2^n - 2, 1], n = n_layers.

    Each logit sees one receptive-field patch (70x70 for n_layers=3), so the adversarial loss
    judges local realism. norm is "group" (32 groups or fewer), "instance" or "none": unlike the
    BatchNorm of pix2pix and taming, these keep the discriminator a pure function of its params.
    """

    channels: int = 64
    n_layers: int = 3
    norm: str = "group"
    max_mult: int = 8
    dtype: Dtype = jnp.float32

    def _norm(self, channels: int, name: str):
        if self.norm == "none":
            return lambda h: h
        if self.norm == "instance":
            groups = channels
        elif self.norm == "group":
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        else:
            raise ValueError(f"norm={self.norm!r}: use group, instance or none")
        return nn.GroupNorm(groups, epsilon=1e-5, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((1, 1), (1, 1))
        conv = lambda ch, stride, name: nn.Conv(
            ch, (4, 4), strides=stride, padding=pad, dtype=self.dtype, name=name
        )
        # The first layer has no normalisation, as in pix2pix: it would discard input contrast.
        h = nn.leaky_relu(conv(self.channels, 2, "conv_0")(x.astype(self.dtype)), 0.2)
        for i in range(1, self.n_layers + 1):
            ch = self.channels * min(2**i, self.max_mult)
            stride = 2 if i < self.n_layers else 1
            h = conv(ch, stride, f"conv_{i}")(h)
            h = nn.leaky_relu(self._norm(ch, f"norm_{i}")(h), 0.2)
        return conv(1, 1, "conv_out")(h).astype(jnp.float32)
