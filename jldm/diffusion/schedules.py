"""Discrete-time noise schedules and the closed-form forward process q(x_t | x_0)."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
    """Per-timestep constants, each [T]; index t in 0..T-1 is diffusion step t+1."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linearly spaced betas (Ho et al.), float64 [T]."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def scaled_linear_betas(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas whose square roots are linearly spaced (Stable Diffusion), float64 [T]."""
    return np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64) ** 2


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2), float64 [T]."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.array(
        [min(1 - f(i + 1) / f(i), max_beta) for i in range(timesteps)], dtype=np.float64
    )


def make_schedule(
    kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """Build a Schedule by name: linear | scaled_linear | cosine."""
    if kind == "linear":
        betas = linear_betas(timesteps, beta_start, beta_end)
    elif kind == "scaled_linear":
        betas = scaled_linear_betas(timesteps, beta_start, beta_end)
    elif kind == "cosine":
        betas = cosine_betas(timesteps)
    else:
        raise ValueError(f"unknown schedule {kind!r}: use linear, scaled_linear or cosine")
    abar = np.cumprod(1.0 - betas)
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(abar, jnp.float32))


def schedule_of_betas(betas) -> Schedule:
    """The Schedule of given betas [T] (alpha_bar accumulated in float64)."""
    b = np.asarray(betas, np.float64)
    return Schedule(jnp.asarray(b, jnp.float32), jnp.asarray(np.cumprod(1.0 - b), jnp.float32))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_mean_std(schedule: Schedule, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of q(x_t | x_0). x0: [B,...], t: [B] -> ([B,...], [B,1,...])."""
    abar = _bcast(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * x0, jnp.sqrt(1.0 - abar)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t ~ q(x_t | x_0) with the given standard normal noise. -> [B,...]."""
    mean, std = q_mean_std(schedule, x0, t)
    return mean + std * noise


def predict_x0_eps(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """Convert a model output (eps, x0 or v prediction) into (x0_hat, eps_hat)."""
    abar = _bcast(schedule.alphas_cumprod[t], x_t)
    a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if prediction == "eps":
        return (x_t - s * output) / a, output
    if prediction == "x0":
        return output, (x_t - a * output) / s
    if prediction == "v":
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f"unknown prediction {prediction!r}: use eps, x0 or v")


def target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str):
    """The regression target for each prediction type: eps, x0, or v = a*eps - s*x0."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        abar = _bcast(schedule.alphas_cumprod[t], x0)
        return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
    raise ValueError(f"unknown prediction {prediction!r}: use eps, x0 or v")
