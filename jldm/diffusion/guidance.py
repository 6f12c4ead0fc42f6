"""Classifier-free guidance (Ho & Salimans 2022): one network, conditional and unconditional."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# model_fn(x [B,...], c [B]) -> the network's output
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def classifier_free_guidance(
    apply_fn: Callable, cond: jax.Array, null_cond: jax.Array, scale: float
) -> ModelFn:
    """model_fn for eps_u + scale * (eps_c - eps_u); scale 1 runs the conditional model only.

    apply_fn(x, t, cond) -> output; cond and null_cond: [B, ...] conditions.
    """
    if scale == 1.0:
        return lambda x, t: apply_fn(x, t, cond)

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        both = apply_fn(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, null_cond])
        )
        out_c, out_u = jnp.split(both, 2)
        return out_u + scale * (out_c - out_u)

    return model_fn
