"""Checks the newer objectives (edm, flow) share: classifier-free guidance's label drop (labels
become the null class num_classes with probability diffusion.cond_drop), and a train step and
the samplers on the tiny UNet."""

import jax
import jax.numpy as jnp
import numpy as np

from jldm.build import objectives
from jldm.build import samplers as registry
from jldm.build.model import build_model, init_params
from jldm.build.objectives import build_loss


class _Recording:
    """A UNet that outputs zeros and keeps the labels it was given."""

    def __init__(self):
        self.seen = []

    def apply(self, variables, x, t_in, labels, train=False, rngs=None):
        self.seen.append(np.asarray(labels))
        return jnp.zeros_like(x)


def check_labels_drop(make_config) -> None:
    """make_config(**overrides) -> a 10-class config. Each label is the null class with
    probability cond_drop, within 4 standard errors of 4000 draws; none is dropped at 0."""
    for p in (0.3, 0.0):
        unet = _Recording()
        loss_fn = build_loss(make_config(**{"diffusion.cond_drop": p}), unet)
        labels = jnp.arange(4000) % 10
        loss_fn(None, jax.random.PRNGKey(9), {"image": jnp.zeros((4000, 2, 2, 1)), "label": labels})
        seen = unet.seen[-1]
        dropped = seen == 10
        assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / 4000) + 1e-9, dropped.mean()
        np.testing.assert_array_equal(seen[~dropped], np.asarray(labels)[~dropped])


def check_tiny_unet_step(config, sampler_names) -> None:
    """The objective's loss on the tiny UNet: positive, with a gradient that matches a central
    finite difference of the loss along a random unit direction (float32: within 5%); each
    sampler of sampler_names draws finite [3, 8, 8, 1] images in 2 steps."""
    model = build_model(config)
    params = jax.jit(lambda k: init_params(model, config, k))(jax.random.PRNGKey(0))
    loss_fn = build_loss(config, model)
    batch = {
        "image": jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1), minval=-1, maxval=1),
        "label": jnp.arange(8) % 10,
    }
    # One compiled program, the loss and its gradient: the finite difference reads its loss.
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p: loss_fn(p, jax.random.PRNGKey(2), batch)[0])
    )
    loss_at = lambda p: loss_and_grad(p)[0]
    loss, grads = loss_and_grad(params)
    assert float(loss) > 0
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    v = [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    norm = float(jnp.sqrt(sum(jnp.sum(x * x) for x in v)))
    v = jax.tree_util.tree_unflatten(tree, [x / norm for x in v])
    h = 1e-2
    step = lambda sign: jax.tree_util.tree_map(lambda p, d: p + sign * h * d, params, v)
    fd = (float(loss_at(step(1.0))) - float(loss_at(step(-1.0)))) / (2 * h)
    directional = sum(float(jnp.sum(g * d)) for g, d in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(v), strict=True
    ))  # fmt: skip
    assert abs(fd - directional) <= 0.05 * abs(directional) + 1e-4, (fd, directional)
    net = objectives.make_net(config, model)
    fn = lambda x, c: net(params, x, c, jnp.arange(x.shape[0]) % 10)
    for name in sampler_names:
        go = registry.get(name).build(registry.Plan(config, (3, 8, 8, 1), 2))
        x = np.asarray(jax.jit(lambda k, go=go: go(fn, k))(jax.random.PRNGKey(3)))
        assert x.shape == (3, 8, 8, 1) and np.isfinite(x).all(), name
