"""Parameter initialisation on the host for tests.

Compiling a Flax init draws one RNG kernel per parameter, which XLA's CPU backend compiles
slowly (tens of seconds for a tiny autoencoder on a busy machine); numpy draws are instant.
"""

import jax
import numpy as np


def host_params(module, *args, seed: int = 0, scale: float = 1.0, **kwargs):
    """Params for module.init(key, *args): kernels and embeddings N(0, scale^2 / fan_in),
    biases zero, norm scales one."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args, **kwargs)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (scale * rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "embedding":
            return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def paths(params) -> set[str]:
    """Slash-joined paths of every leaf."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path) for path, _ in flat}
