"""Flow matching on the linear path (Lipman et al. 2023, "Flow matching for generative
modeling"; Liu et al. 2023, "Flow straight and fast", rectified flow).

x_t = (1 - t) x0 + t z, z ~ N(0, I), t in [0, 1]; the network regresses the velocity
v = z - x0, whose conditional mean v(x, t) = E[z - x0 | x_t = x] drives the ODE dx/dt = v from
the prior N(0, I) at t = 1 to the data at t = 0. Training times are uniform or logit-normal
(Esser et al. 2024, "Scaling rectified flow transformers": t = sigmoid(m + s n), n ~ N(0, 1)).
In the EDM frame (jldm.diffusion.frame) the path has alpha = 1 - t, sigma = t / (1 - t) and
the denoiser D = x - t v.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.frame import Denoiser, Frame
from jldm.diffusion.likelihood import ProbabilityFlow, normal_logp
from jldm.diffusion.losses import drop_condition

# velocity(x [B,...], t [B]) -> v [B,...]
Velocity = Callable[[jax.Array, jax.Array], jax.Array]
TIME_SAMPLING = ("uniform", "logit_normal")


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def interpolate(x0: jax.Array, z: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t z. x0, z: [B,...], t: [B] -> [B,...]."""
    t = _bcast(t, x0)
    return (1.0 - t) * x0 + t * z


def sample_time(
    key: jax.Array, n: int, kind: str = "uniform", mean: float = 0.0, std: float = 1.0
) -> jax.Array:
    """Training times: uniform on [0, 1), or logit-normal sigmoid(mean + std n). -> [n]."""
    if kind == "uniform":
        return jax.random.uniform(key, (n,))
    if kind == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,)))
    raise ValueError(f"unknown time sampling {kind!r}: use {' or '.join(TIME_SAMPLING)}")


def make_flow_loss(
    velocity_fn: Callable[..., jax.Array],
    time_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    factor: Callable[[jax.Array], jax.Array] | None = None,
    null_label=None,
    cond_drop: float = 0.0,
) -> Callable:
    """Flow matching loss: mean over the batch of factor(t) mean_pixels |v_hat - (z - x0)|^2.

    velocity_fn(params, x_t [B,...], t [B], labels, train, rngs) -> v_hat. Returns
    loss_fn(params, rng, batch) -> (loss, metrics), batch = {"image": [B,H,W,C], "label": [B]
    or [B, L]}; labels become null_label with probability cond_drop. factor(t [B]) -> [B]
    reweighs the times (None: 1).
    """
    if cond_drop > 0 and null_label is None:
        raise ValueError("cond_drop > 0 needs a null_label")
    sample_time(jax.random.PRNGKey(0), 1, time_sampling)  # refuses an unknown kind now

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x0, labels = batch["image"], batch["label"]
        k_t, k_z, k_drop, k_dropout = jax.random.split(rng, 4)
        t = sample_time(k_t, x0.shape[0], time_sampling, logit_mean, logit_std).astype(x0.dtype)
        z = jax.random.normal(k_z, x0.shape, x0.dtype)
        if cond_drop > 0:
            labels = drop_condition(k_drop, labels, null_label, cond_drop)
        v = velocity_fn(params, interpolate(x0, z, t), t, labels, True, {"dropout": k_dropout})
        err = jnp.mean(jnp.square(v - (z - x0)).reshape(x0.shape[0], -1), axis=-1)
        if factor is not None:
            err = err * factor(t)
        loss = jnp.mean(err)
        return loss, {"loss": loss, "t": jnp.mean(t)}

    return loss_fn


def _batch_t(x: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.full((x.shape[0],), t, x.dtype)


def flow_frame(eps: float = 1e-3) -> Frame:
    """A velocity model fn(x, t [B]) -> v as a frame.Frame over t in [eps, 1 - eps].

    xbar = x / (1 - t), sigma = t / (1 - t), D = x - t v; the prior at sigma is N(0, sigma^2 +
    1), the marginal of unit-variance data (N(0, I) at t = 1). Its native grid is uniform in t,
    on which the frame's Euler step is Euler's method on dx/dt = v.
    """

    def denoiser(fn: Callable) -> Denoiser:
        def d(xbar: jax.Array, sigma: jax.Array) -> jax.Array:
            t = sigma / (1.0 + sigma)
            x = xbar / (1.0 + sigma)
            return x - t * fn(x, _batch_t(x, t))

        return d

    def native(n: int, hi: float) -> np.ndarray:
        t = np.linspace(min(hi / (1.0 + hi), 1.0 - eps), eps, n)
        return t / (1.0 - t)

    return Frame(denoiser, eps / (1.0 - eps), (1.0 - eps) / eps, 1.0, None, native)


def probability_flow(velocity: Velocity) -> ProbabilityFlow:
    """The probability-flow ODE of a velocity model: dx/dt = v(x, t) from the data at t = 0 to
    the prior N(0, I) at t = 1, which is the path's exact marginal there."""
    return ProbabilityFlow(velocity, normal_logp, 0.0, 1.0)
