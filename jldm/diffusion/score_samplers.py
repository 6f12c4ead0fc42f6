"""Score-based samplers: (annealed) Langevin dynamics, predictor-corrector SDE sampling and the
probability-flow ODE, each one lax.scan over its steps.

A sampler takes score_fn(x [B,...], c [B]) -> grad_x log p [B,...], c a noise level sigma or a
time t, and a key; step i draws its noise from fold_in(key, i), so nothing leaves the device.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jldm.diffusion.sde import SDE

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _full(x: jax.Array, value) -> jax.Array:
    return jnp.full((x.shape[0],), value, x.dtype)


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def langevin(
    score_fn: ScoreFn,
    key: jax.Array,
    x0: jax.Array,
    step_size: float,
    n_steps: int,
    sigma: float = 0.0,
) -> jax.Array:
    """Langevin x <- x + a s(x, sigma) + sqrt(2a) u, u ~ N(0, I). x0: [B,...] -> [B,...]."""
    c = _full(x0, sigma)

    def body(x, i):
        u = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return x + step_size * score_fn(x, c) + jnp.sqrt(2.0 * step_size) * u, None

    x, _ = jax.lax.scan(body, x0, jnp.arange(n_steps))
    return x


def annealed_langevin(
    score_fn: ScoreFn,
    key: jax.Array,
    x0: jax.Array,
    sigmas: jax.Array,
    steps_per_sigma: int,
    eps: float,
    denoise: bool = True,
) -> jax.Array:
    """Annealed Langevin (Song & Ermon 2019) over sigmas [L], descending. x0: [B,...] -> [B,...].

    Level i runs steps_per_sigma steps of size a_i = eps sigma_i^2 / sigma_L^2. denoise adds the
    final Tweedie step x + sigma_L^2 s(x, sigma_L), the posterior mean of the clean data.
    """
    sigmas = jnp.asarray(sigmas, x0.dtype)
    levels = jnp.repeat(sigmas, steps_per_sigma)
    last = sigmas[-1]

    def body(x, inp):
        i, sigma = inp
        a = eps * jnp.square(sigma / last)
        u = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return x + a * score_fn(x, _full(x, sigma)) + jnp.sqrt(2.0 * a) * u, None

    x, _ = jax.lax.scan(body, x0, (jnp.arange(levels.shape[0]), levels))
    if denoise:
        x = x + jnp.square(last) * score_fn(x, _full(x, last))
    return x


def _final(sde: SDE, score_fn: ScoreFn, x: jax.Array, eps: float, denoise: bool) -> jax.Array:
    """x at time eps, or its posterior mean E[x(0) | x(eps)] when denoise."""
    return sde.denoise(score_fn, x, _full(x, eps)) if denoise else x


def euler_maruyama(
    sde: SDE, score_fn: ScoreFn, key: jax.Array, x: jax.Array, t: jax.Array, dt: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One reverse-time Euler-Maruyama step t -> t - dt (dt > 0). -> (x, noise-free mean)."""
    tb = _full(x, t)
    x_mean = x - sde.reverse_drift(score_fn, x, tb) * dt
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + _bcast(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise, x_mean


def langevin_corrector(
    score_fn: ScoreFn, key: jax.Array, x: jax.Array, t: jax.Array, snr: float, n_steps: int
) -> tuple[jax.Array, jax.Array]:
    """n_steps Langevin steps at time t, step 2 (snr |z| / |s|)^2. -> (x, noise-free mean).

    As in Song et al.'s reference code the norms are batch means, which keeps the step finite
    when one sample sits on a mode (|s| = 0); their extra VP factor alpha_i ~ 1 is left out.
    """
    tb = _full(x, t)

    def body(i, carry):
        x, _ = carry
        s = score_fn(x, tb)
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        s_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(s.reshape(s.shape[0], -1)), -1)))
        z_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(z.reshape(z.shape[0], -1)), -1)))
        step = 2.0 * jnp.square(snr * z_norm / jnp.maximum(s_norm, 1e-12))
        x_mean = x + step * s
        return x_mean + jnp.sqrt(2.0 * step) * z, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def pc_sample(
    sde: SDE,
    score_fn: ScoreFn,
    key: jax.Array,
    shape: tuple[int, ...],
    n_steps: int,
    snr: float = 0.16,
    n_corrector: int = 1,
    eps: float = 1e-3,
    denoise: bool = True,
) -> tuple[jax.Array, int]:
    """Predictor-corrector sampling from T to eps. -> (x: shape, score evaluations).

    Each of n_steps runs n_corrector Langevin corrector steps, then one reverse Euler-Maruyama
    step; the last step returns its noise-free mean. denoise: then the Tweedie step at eps,
    E[x(0) | x(eps)] (one more evaluation).
    """
    k_init, k_steps = jax.random.split(key)
    x = sde.prior_sample(k_init, shape)
    ts = jnp.linspace(sde.T, eps, n_steps + 1)

    def body(carry, i):
        x, _ = carry
        t, dt = ts[i], ts[i] - ts[i + 1]
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_steps, i))
        if n_corrector > 0:
            x, _ = langevin_corrector(score_fn, k_corr, x, t, snr, n_corrector)
        return euler_maruyama(sde, score_fn, k_pred, x, t, dt), None

    (_, x_mean), _ = jax.lax.scan(body, (x, x), jnp.arange(n_steps))
    return _final(sde, score_fn, x_mean, eps, denoise), n_steps * (1 + n_corrector) + denoise


def odeint_fixed(
    f: Callable[[Any, jax.Array], Any],
    y0: Any,
    t0: float,
    t1: float,
    n_steps: int,
    method: str = "rk4",
) -> Any:
    """Integrate dy/dt = f(y, t) from t0 to t1 (either direction) in n_steps fixed steps.

    y is any pytree; t is a scalar; method rk4 (4 evaluations a step) or heun (2).
    """
    if method not in ("rk4", "heun"):
        raise ValueError(f"unknown ODE method {method!r}: use rk4 or heun")
    h = (t1 - t0) / n_steps
    add = lambda y, k, c: jax.tree_util.tree_map(lambda a, b: a + c * b, y, k)

    def body(y, i):
        t = t0 + i * h
        k1 = f(y, t)
        if method == "heun":
            k2 = f(add(y, k1, h), t + h)
            ks, ws = (k1, k2), (0.5, 0.5)
        else:
            k2 = f(add(y, k1, h / 2), t + h / 2)
            k3 = f(add(y, k2, h / 2), t + h / 2)
            k4 = f(add(y, k3, h), t + h)
            ks, ws = (k1, k2, k3, k4), (1 / 6, 1 / 3, 1 / 3, 1 / 6)
        for k, w in zip(ks, ws, strict=True):
            y = add(y, k, w * h)
        return y, None

    y, _ = jax.lax.scan(body, y0, jnp.arange(n_steps))
    return y


# Dormand-Prince 5(4): nodes, stage weights, 5th-order weights and (5th - 4th)-order weights.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def odeint_adaptive(
    f: Callable[[Any, jax.Array], Any],
    y0: Any,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 2000,
) -> tuple[Any, jax.Array, jax.Array]:
    """Integrate dy/dt = f(y, t) from t0 to t1 by Dormand-Prince 5(4), each sample on its own.

    y is a pytree whose leaves share a leading batch axis B; f(y, t) gets the times t: [B]. Each
    sample keeps its own time, step size and error norm, so its result does not depend on the
    others in the batch (or on padding): a step is accepted when the RMS over the sample's
    elements of error / (atol + rtol |y|) is <= 1, and its next size is
    h * clip(0.9 err^(-1/5), 0.2, 5). The first size is 1e-4 |t1 - t0|. One lax.while_loop runs
    until every sample reached t1 or made max_steps attempts; f sees the whole batch each
    iteration, finished samples held in place. -> (y(t1), evaluations [B], reached t1 [B]).
    """
    span = t1 - t0
    leaves = jax.tree_util.tree_leaves(y0)
    b = leaves[0].shape[0]
    size = sum(math.prod(a.shape[1:]) for a in leaves)
    per = lambda v, a: v.reshape((b,) + (1,) * (a.ndim - 1))

    def combine(y, h, ks, ws):
        def leaf(a, *kk):
            return a + per(h, a) * sum(w * k for w, k in zip(ws, kk, strict=False) if w != 0.0)

        return jax.tree_util.tree_map(leaf, y, *ks)

    def sq_sum(tree):
        return sum(
            jnp.sum(jnp.square(a).reshape(b, -1), -1) for a in jax.tree_util.tree_leaves(tree)
        )

    def step(state):
        t, y, k1, h, n, nfe = state
        active = (t1 - t) * span > 0
        active &= n < max_steps
        last = (t1 - (t + h)) * span <= 0
        h = jnp.where(active, jnp.where(last, t1 - t, h), 0.0)  # land exactly on t1
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:], strict=True):
            ks.append(f(combine(y, h, ks, a), t + c * h))
        y_new = combine(y, h, ks, _DP_B)
        k7 = f(y_new, t + h)
        err = combine(jax.tree_util.tree_map(jnp.zeros_like, y), h, ks + [k7], _DP_E)
        scaled = jax.tree_util.tree_map(
            lambda e, a, c: e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(c))), err, y, y_new
        )
        norm = jnp.sqrt(sq_sum(scaled) / size)
        ok = active & (norm <= 1.0)
        factor = jnp.clip(0.9 * jnp.where(norm > 0, norm, 1e-10) ** -0.2, 0.2, 5.0)
        pick = lambda new, old: jax.tree_util.tree_map(
            lambda u, v: jnp.where(per(ok, u), u, v), new, old
        )
        return (
            jnp.where(ok, jnp.where(last, t1, t + h), t),
            pick(y_new, y),
            pick(k7, k1),
            jnp.where(active, h * factor, state[3]),
            n + active,
            nfe + 6 * active,
        )

    def running(state):
        t, _, _, _, n, _ = state
        return jnp.any(((t1 - t) * span > 0) & (n < max_steps))

    t_start = jnp.full((b,), t0, jnp.float32)
    h0 = jnp.full((b,), 1e-4 * span, jnp.float32)
    zero = jnp.zeros((b,), jnp.int32)
    init = (t_start, y0, f(y0, t_start), h0, zero, zero + 1)
    t, y, _, _, _, nfe = jax.lax.while_loop(running, step, init)
    return y, nfe, (t1 - t) * span <= 0


def ode_sample(
    sde: SDE,
    score_fn: ScoreFn,
    key: jax.Array,
    shape: tuple[int, ...],
    n_steps: int,
    eps: float = 1e-3,
    method: str = "rk4",
    denoise: bool = True,
) -> tuple[jax.Array, int]:
    """Probability-flow ODE from a prior draw at T down to eps. -> (x, score evaluations).

    denoise: then the Tweedie step at eps, E[x(0) | x(eps)] (one more evaluation).
    """
    x = sde.prior_sample(key, shape)
    drift = lambda y, t: sde.ode_drift(score_fn, y, _full(y, t))
    x = odeint_fixed(drift, x, sde.T, eps, n_steps, method)
    nfe = n_steps * (4 if method == "rk4" else 2) + denoise
    return _final(sde, score_fn, x, eps, denoise), nfe
