"""A small noise-conditioned MLP for toy data: a score [B,D] or an energy [B]."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def fourier_features(
    c: jax.Array, dim: int, min_freq: float = 0.25, max_freq: float = 8.0
) -> jax.Array:
    """[c, sin(w c), cos(w c)] over dim // 2 geometric frequencies w. c: [B] -> [B, 1 + dim]."""
    freqs = jnp.geomspace(min_freq, max_freq, dim // 2)
    args = c.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([c[:, None], jnp.sin(args), jnp.cos(args)], axis=-1)


class ScoreMLP(nn.Module):
    """SiLU MLP of x [B,D] conditioned on c [B] (log c if log_cond) at every layer.

    Output: the score [B,D], or with energy=True a scalar energy [B] whose -grad_x is the score
    (jldm.diffusion.score_losses.as_score). SiLU keeps the second derivatives that implicit and
    sliced score matching and energy models need (ReLU would zero them).
    """

    features: int = 128
    depth: int = 3
    embed_dim: int = 16
    energy: bool = False
    log_cond: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        c = jnp.broadcast_to(jnp.asarray(c, x.dtype), (x.shape[0],))
        if self.log_cond:
            c = jnp.log(c)
        emb = fourier_features(c, self.embed_dim)
        h = x
        for i in range(self.depth):
            h = nn.Dense(self.features, name=f"dense_{i}")(h)
            h = nn.silu(h + nn.Dense(self.features, name=f"cond_{i}")(emb))
        if self.energy:
            return nn.Dense(1, name="out")(h)[:, 0]
        return nn.Dense(x.shape[-1], name="out")(h)
