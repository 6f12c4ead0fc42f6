"""Integrators of dy/dt = f(y, t) for pytrees y: fixed-step RK4 on a grid and adaptive
Dormand-Prince 5(4) with each sample's own steps (for the likelihood ODE and the samplers)."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

_RK4_C = (0.0, 0.5, 0.5, 1.0)  # classical RK4: nodes (each stage from the previous slope)
_RK4_B = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # and weights


def rk4_step(f: Callable[[Any, jax.Array], Any], y: Any, t: jax.Array, h: jax.Array) -> Any:
    """One classical Runge-Kutta step of size h from (y, t) (4 evaluations).

    The stages run in a loop, so a compiled program holds f once, not four times (a quarter of
    the compile of a network's ODE); y_i = y + c_i h k_(i-1), result y + sum_i (b_i h) k_i."""

    def add(y, k, c):
        return jax.tree_util.tree_map(lambda a, b: (a + c * b).astype(a.dtype), y, k)

    def stage(carry, cw):
        out, k = carry
        c, w = cw
        k = f(add(y, k, c * h), t + c * h)
        return (add(out, k, w * h), k), None

    k0 = jax.tree_util.tree_map(jnp.zeros_like, y)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y))  # the tableau in the state's precision
    nodes = (jnp.asarray(_RK4_C, dtype), jnp.asarray(_RK4_B, dtype))
    return jax.lax.scan(stage, (y, k0), nodes)[0][0]


def odeint_fixed(
    f: Callable[[Any, jax.Array], Any], y0: Any, t0: float, t1: float, n_steps: int
) -> Any:
    """Integrate dy/dt = f(y, t) from t0 to t1 (either direction) in n_steps RK4 steps (4
    evaluations each); y is any pytree, t a scalar."""
    h = (t1 - t0) / n_steps
    body = lambda y, i: (rk4_step(f, y, t0 + i * h, h), None)
    return jax.lax.scan(body, y0, jnp.arange(n_steps))[0]


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

    def combine(y, h, ks, ws, traced=False):
        def leaf(a, *kk):
            terms = zip(ws, kk, strict=False)
            return a + per(h, a) * sum(w * k for w, k in terms if traced or w != 0.0)

        return jax.tree_util.tree_map(leaf, y, *ks)

    def slots(buf):  # the seven slopes of a stage buffer
        return [jax.tree_util.tree_map(lambda b, j=j: b[j], buf) for j in range(7)]

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

        # Stages 2..7 in a loop (f compiled once, not six times): stage i from the slopes
        # before it (row i of A; the 7th row is B, the first same as last), its slope into
        # slot i of a buffer of seven.
        def stage(i, buf):
            ks = slots(buf)
            row = [rows[i, j] for j in range(7)]  # traced: zeros are added, not skipped
            k = f(combine(y, h, ks, row, traced=True), t + nodes[i] * h)
            return jax.tree_util.tree_map(lambda b, v: b.at[i].set(v), buf, k)

        buf = jax.tree_util.tree_map(lambda k: jnp.zeros((7,) + k.shape, k.dtype).at[0].set(k), k1)
        buf = jax.lax.fori_loop(1, 7, stage, buf)
        ks = slots(buf)
        y_new, k7 = combine(y, h, ks[:6], _DP_B), ks[6]
        err = combine(jax.tree_util.tree_map(jnp.zeros_like, y), h, ks, _DP_E)
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

    dtype = jnp.result_type(*leaves)  # the tableau in the state's precision
    rows = jnp.asarray([r + (0.0,) * (7 - len(r)) for r in (*_DP_A, _DP_B)], dtype)
    nodes = jnp.asarray(_DP_C + (1.0,), dtype)
    t_start = jnp.full((b,), t0, jnp.float32)
    h0 = jnp.full((b,), 1e-4 * span, jnp.float32)
    zero = jnp.zeros((b,), jnp.int32)
    init = (t_start, y0, f(y0, t_start), h0, zero, zero + 1)
    t, y, _, _, _, nfe = jax.lax.while_loop(running, step, init)
    return y, nfe, (t1 - t) * span <= 0
