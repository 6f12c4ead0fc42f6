"""Training objectives as factories returning pure, jittable loss functions."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jldm.diffusion.schedules import Schedule, q_sample, target
from jldm.diffusion.weighting import min_snr_factor

# apply_fn(params, x_t [B,H,W,C], t [B] int, labels [B] int, train, rngs) -> output [B,H,W,C]
ApplyFn = Callable[..., jax.Array]


def drop_condition(key: jax.Array, cond: jax.Array, null, p: float) -> jax.Array:
    """Replace each example's condition by null with probability p. cond: [B, ...] -> same.

    cond is a class id [B] or a token sequence [B, L]; null is a scalar or one condition [...].
    """
    drop = jax.random.bernoulli(key, p, cond.shape[:1]).reshape((-1,) + (1,) * (cond.ndim - 1))
    return jnp.where(drop, jnp.asarray(null, cond.dtype), cond)


def make_ddpm_loss(
    apply_fn: ApplyFn,
    schedule: Schedule,
    prediction: str = "eps",
    null_label=None,
    cond_drop: float = 0.0,
    weighting: str = "default",
    gamma: float = 5.0,
) -> Callable:
    """DDPM regression loss: |target - f(x_t, t, y)|^2 with target eps, x0 or v.

    Returns loss_fn(params, rng, batch) -> (loss, metrics), batch = {"image": [B,H,W,C] in
    [-1, 1], "label": [B] class ids or [B, L] token ids}. With cond_drop > 0, an example's
    condition is replaced by `null_label` (a class id, or the empty prompt's ids [L]) with that
    probability, which trains the unconditional model for classifier-free guidance.
    weighting "min_snr" multiplies each sample's error by min(SNR, gamma) / w, w the x0 weight
    of the target (jldm.diffusion.weighting), SNR = abar / (1 - abar).
    """
    if cond_drop > 0 and null_label is None:
        raise ValueError("cond_drop > 0 needs a null_label")
    if weighting not in ("default", "min_snr"):
        raise ValueError(f"weighting {weighting!r} does not apply to ddpm: use default or min_snr")

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x0, labels = batch["image"], batch["label"]
        k_t, k_noise, k_drop, k_dropout = jax.random.split(rng, 4)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)
        if cond_drop > 0:
            labels = drop_condition(k_drop, labels, null_label, cond_drop)
        out = apply_fn(params, x_t, t, labels, True, {"dropout": k_dropout})
        err = jnp.square(out - target(schedule, x0, t, noise, prediction))
        if weighting == "min_snr":
            abar = schedule.alphas_cumprod[t]
            w = min_snr_factor(prediction, jnp.sqrt(abar), jnp.sqrt(1.0 - abar), gamma)
            err = err * w.reshape((-1,) + (1,) * (err.ndim - 1))
        loss = jnp.mean(err)
        return loss, {"loss": loss}

    return loss_fn
