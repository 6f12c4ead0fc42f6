"""A small convolutional feature network for the perceptual (LPIPS-style) distance.

LPIPS uses an ImageNet VGG; nothing here downloads weights. Train this net as a classifier on
the same data (its __call__ gives logits); jldm.train.autoencoder trains, saves and loads it.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jldm.nn.layers import Dtype


class PerceptualNet(nn.Module):
    """Conv stages, each halving the resolution. x: [B,H,W,C] -> logits [B, num_classes]."""

    features_per_stage: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.convs = [
            (
                nn.Conv(ch, (3, 3), dtype=self.dtype, name=f"stage_{i}_conv_0"),
                nn.Conv(ch, (3, 3), dtype=self.dtype, name=f"stage_{i}_conv_1"),
            )
            for i, ch in enumerate(self.features_per_stage)
        ]
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, name="head")

    def features(self, x: jax.Array) -> list[jax.Array]:
        """x: [B,H,W,C] -> one map per stage, [B, H/2^i, W/2^i, features_per_stage[i]]."""
        h = x.astype(self.dtype)
        out = []
        for i, (c0, c1) in enumerate(self.convs):
            if i > 0:
                h = nn.avg_pool(h, (2, 2), (2, 2), padding="SAME")
            h = nn.relu(c1(nn.relu(c0(h))))
            out.append(h.astype(jnp.float32))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B,H,W,C] -> class logits [B, num_classes] from the pooled last stage."""
        return self.head(jnp.mean(self.features(x)[-1], axis=(1, 2))).astype(jnp.float32)


def feature_fn(net: PerceptualNet, params) -> Callable[[jax.Array], list[jax.Array]]:
    """x: [B,H,W,C] -> list of feature maps, with params fixed (the loss does not train them)."""
    params = jax.lax.stop_gradient(params)
    return lambda x: net.apply({"params": params}, x, method=PerceptualNet.features)
