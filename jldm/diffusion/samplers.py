"""Samplers for discrete-time diffusion: ancestral DDPM, DDIM and Heun steps, each one lax.scan.

A sampler takes model_fn(x [B,...], t [B] int) -> model output and never leaves the device.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion.schedules import Schedule, predict_x0_eps, q_sample

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


def ddpm_step(
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    output: jax.Array,
    noise: jax.Array,
    prediction: str = "eps",
    clip_x0: bool = True,
) -> jax.Array:
    """One ancestral step x_t -> x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat).

    t: scalar int (same for the batch); noise: standard normal like x_t, unused at t == 0.
    """
    tb = jnp.full((x_t.shape[0],), t)
    x0, _ = predict_x0_eps(schedule, x_t, tb, output, prediction)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    beta = schedule.betas[t]
    abar = schedule.alphas_cumprod[t]
    abar_prev = jnp.where(t > 0, schedule.alphas_cumprod[jnp.maximum(t - 1, 0)], 1.0)
    coef_x0 = beta * jnp.sqrt(abar_prev) / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * jnp.sqrt(1.0 - beta) / (1.0 - abar)
    var = beta * (1.0 - abar_prev) / (1.0 - abar)
    mean = coef_x0 * x0 + coef_xt * x_t
    return mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * noise


Known = tuple[jax.Array, jax.Array]  # (x0_known [B,...], mask [B,...] or broadcastable; 1 = keep)


def paste_known(
    schedule: Schedule, x: jax.Array, known: Known | None, t_prev: jax.Array, key: jax.Array
) -> jax.Array:
    """Inpainting: put the known region, noised to t_prev by q, back into x (t_prev < 0: clean).

    Every step then denoises the unknown region in the context of a correctly noised known one,
    and the final x_0 holds the known pixels exactly.
    """
    if known is None:
        return x
    x0_known, mask = known
    tb = jnp.full((x.shape[0],), jnp.maximum(t_prev, 0))
    noised = q_sample(schedule, x0_known, tb, jax.random.normal(key, x.shape))
    keep = jnp.where(t_prev >= 0, noised, x0_known)
    return mask * keep + (1.0 - mask) * x


def ddpm_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    prediction: str = "eps",
    clip_x0: bool = True,
    known: Known | None = None,
) -> jax.Array:
    """Ancestral sampling over all T steps from x_T ~ N(0, I). -> x_0: shape.

    known: (x0_known, mask) keeps the masked region (inpainting, see paste_known).
    """
    k_init, k_steps, k_known = jax.random.split(key, 3)
    x = jax.random.normal(k_init, shape)

    def body(x, t):
        out = model_fn(x, jnp.full((shape[0],), t))
        noise = jax.random.normal(jax.random.fold_in(k_steps, t), shape)
        x = ddpm_step(schedule, x, t, out, noise, prediction, clip_x0)
        return paste_known(schedule, x, known, t - 1, jax.random.fold_in(k_known, t)), None

    ts = jnp.arange(schedule.num_timesteps - 1, -1, -1)
    x, _ = jax.lax.scan(body, x, ts)
    return x


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """`steps` evenly spaced timesteps, descending from T-1, ending at 0. -> int [steps]."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_timesteps}, got {steps}")
    return np.linspace(num_timesteps - 1, 0, steps).round().astype(np.int32)


def ddim_step(
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    output: jax.Array,
    noise: jax.Array,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = False,
    eps_from_clipped: bool = True,
) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev}; t_prev < 0 means the clean end (alpha_bar = 1).

    clip_x0 clips the x0 estimate to [-1, 1]. With eps_from_clipped (the default) the noise
    estimate is then derived again from the clipped x0, eps = (x_t - sqrt(abar) x0) /
    sqrt(1 - abar), so the step is DDIM's step for the clipped estimate: x_t stays on the
    path its own x0 and eps describe, and more steps converge. Keeping the network's eps beside
    a clipped x0 (eps_from_clipped=False, diffusers' DDIMScheduler default) moves each step off
    that path, an error that grows with the step count; the pretrained pipelines keep it for
    parity with diffusers.
    """
    tb = jnp.full((x_t.shape[0],), t)
    x0, eps = predict_x0_eps(schedule, x_t, tb, output, prediction)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        if eps_from_clipped:  # read the clipped x0 as an x0 prediction: its eps
            x0, eps = predict_x0_eps(schedule, x_t, tb, x0, "x0")
    abar = schedule.alphas_cumprod[t]
    abar_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    dir_xt = jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(abar_prev) * x0 + dir_xt + sigma * noise


def ddim_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    steps: int = 50,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = True,
    x_T: jax.Array | None = None,
    known: Known | None = None,
) -> jax.Array:
    """DDIM from x_T (drawn from N(0, I) unless given); eta=0 is deterministic. -> x_0.

    known: (x0_known, mask) keeps the masked region (inpainting, see paste_known).
    """
    k_init, k_steps, k_known = jax.random.split(key, 3)
    x = jax.random.normal(k_init, shape) if x_T is None else x_T
    ts = ddim_timesteps(schedule.num_timesteps, steps)
    pairs = jnp.asarray(np.stack([ts, np.append(ts[1:], -1)], axis=1))

    deterministic = isinstance(eta, int | float) and eta == 0

    def body(x, tt):
        t, t_prev = tt[0], tt[1]
        out = model_fn(x, jnp.full((shape[0],), t))
        if deterministic:  # sigma is 0: no noise to draw at every step
            noise = jnp.zeros((), x.dtype)
        else:
            noise = jax.random.normal(jax.random.fold_in(k_steps, t), shape)
        x = ddim_step(schedule, x, t, t_prev, out, noise, eta, prediction, clip_x0)
        return paste_known(schedule, x, known, t_prev, jax.random.fold_in(k_known, t)), None

    x, _ = jax.lax.scan(body, x, pairs)
    return x


def ddim_invert(
    model_fn: ModelFn, schedule: Schedule, x0: jax.Array, steps: int = 50, prediction: str = "eps"
) -> jax.Array:
    """Run deterministic DDIM backwards, x_0 -> x_T, on the timesteps ddim_sample uses."""
    ts = ddim_timesteps(schedule.num_timesteps, steps)[::-1]
    pairs = jnp.asarray(np.stack([np.append(-1, ts[:-1]), ts], axis=1))

    def body(x, tt):
        t_from, t_to = tt[0], tt[1]
        # The model is evaluated where we stand; at the clean end that is timestep 0.
        t_eval = jnp.maximum(t_from, 0)
        out = model_fn(x, jnp.full((x.shape[0],), t_eval))
        _, eps = predict_x0_eps(schedule, x, jnp.full((x.shape[0],), t_eval), out, prediction)
        abar_from = jnp.where(t_from >= 0, schedule.alphas_cumprod[t_eval], 1.0)
        x0_hat = (x - jnp.sqrt(1 - abar_from) * eps) / jnp.sqrt(abar_from)
        abar_to = schedule.alphas_cumprod[t_to]
        return jnp.sqrt(abar_to) * x0_hat + jnp.sqrt(1 - abar_to) * eps, None

    x, _ = jax.lax.scan(body, x0, pairs)
    return x


def eps_score(model_fn: ModelFn, schedule: Schedule, prediction: str = "eps") -> ModelFn:
    """score_fn(x, t) = -eps_hat(x, t) / sqrt(1 - alpha_bar_t) of a model on the schedule.

    t: [B] timesteps, integers or integer-valued floats (as the score samplers pass them).
    """

    def score_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        t = t.astype(jnp.int32)
        _, eps = predict_x0_eps(schedule, x, t, model_fn(x, t), prediction)
        std = jnp.sqrt(1.0 - schedule.alphas_cumprod[t]).reshape((-1,) + (1,) * (x.ndim - 1))
        return -eps / std

    return score_fn


def heun_step(
    model_fn: ModelFn,
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    prediction: str = "eps",
) -> jax.Array:
    """One probability-flow ODE step x_t -> x_{t_prev} by Heun's method; t_prev < 0: the clean end.

    In xbar = x / sqrt(alpha_bar) and sigma = sqrt(1 / alpha_bar - 1) the ODE is
    d xbar / d sigma = eps_hat(x, t). Its Euler step is DDIM with eta 0; Heun averages eps_hat at
    both ends (2 evaluations). The step onto sigma = 0 (t_prev < 0) stays Euler, 1 evaluation.
    """
    b = x_t.shape[0]
    abar = schedule.alphas_cumprod[t]
    abar_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    sigma, sigma_prev = jnp.sqrt(1 / abar - 1), jnp.sqrt(1 / abar_prev - 1)
    eps_at = lambda x, s: predict_x0_eps(
        schedule, x, jnp.full((b,), s), model_fn(x, jnp.full((b,), s)), prediction
    )[1]
    e1 = eps_at(x_t, t)
    xbar = x_t / jnp.sqrt(abar)
    euler = xbar + (sigma_prev - sigma) * e1

    def heun():
        e2 = eps_at(euler * jnp.sqrt(abar_prev), jnp.maximum(t_prev, 0))
        return xbar + (sigma_prev - sigma) * 0.5 * (e1 + e2)

    return jax.lax.cond(t_prev >= 0, heun, lambda: euler) * jnp.sqrt(abar_prev)
