"""Training objectives as factories returning pure, jittable loss functions."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jldm.diffusion.schedules import Schedule, q_sample, target

# apply_fn(params, x_t [B,H,W,C], t [B] int, labels [B] int, train, rngs) -> output [B,H,W,C]
ApplyFn = Callable[..., jax.Array]


def make_ddpm_loss(
    apply_fn: ApplyFn,
    schedule: Schedule,
    prediction: str = "eps",
    null_label: int | None = None,
    cond_drop: float = 0.0,
) -> Callable:
    """DDPM regression loss: |target - f(x_t, t, y)|^2 with target eps, x0 or v.

    Returns loss_fn(params, rng, batch) -> (loss, metrics), batch = {"image": [B,H,W,C] in
    [-1, 1], "label": [B] int}. With cond_drop > 0, labels are replaced by `null_label` with
    that probability, which trains the unconditional model for classifier-free guidance.
    """
    if cond_drop > 0 and null_label is None:
        raise ValueError("cond_drop > 0 needs a null_label")

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x0, labels = batch["image"], batch["label"]
        k_t, k_noise, k_drop, k_dropout = jax.random.split(rng, 4)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)
        if cond_drop > 0:
            drop = jax.random.bernoulli(k_drop, cond_drop, labels.shape)
            labels = jnp.where(drop, null_label, labels)
        out = apply_fn(params, x_t, t, labels, True, {"dropout": k_dropout})
        err = jnp.square(out - target(schedule, x0, t, noise, prediction))
        loss = jnp.mean(err)
        return loss, {"loss": loss}

    return loss_fn
