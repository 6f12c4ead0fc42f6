"""The classifier-free guidance check every objective's loss shares: labels become the null
class (num_classes) with probability diffusion.cond_drop."""

import jax
import jax.numpy as jnp
import numpy as np

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
