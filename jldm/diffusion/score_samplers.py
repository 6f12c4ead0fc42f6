"""Samplers of the score in the EDM frame (jldm.diffusion.frame): Langevin dynamics, annealed
Langevin (Song & Ermon 2019), reverse-SDE predictor-corrector and Euler-Maruyama (Song et al.
2021), and the probability-flow ODE by RK4 (one lax.scan each) or adaptively.

score(xbar [B,...], sigma scalar) -> grad log p_sigma(xbar), sigma the noise level of
xbar = x0 + sigma n (frame.score_of reads it off any objective's denoiser). In this frame every
forward process is the VE SDE d xbar = sqrt(d sigma^2 / dt) dw, so the reverse SDE's
Euler-Maruyama step from sigma to sigma' is
xbar' = xbar + (sigma^2 - sigma'^2) s(xbar, sigma) + sqrt(sigma^2 - sigma'^2) z. Grids end at
sigma = 0, where that step without noise is Tweedie's posterior mean D (one evaluation).
"""

import math

import jax
import jax.numpy as jnp

from jldm.diffusion.frame import Known, Score, paste, scan_grid
from jldm.diffusion.odeint import odeint_adaptive, rk4_step


def langevin(
    score: Score, key: jax.Array, x0: jax.Array, step_size: float, n_steps: int, sigma: float
) -> jax.Array:
    """Langevin x <- x + a s(x, sigma) + sqrt(2a) u, u ~ N(0, I). x0: [B,...] -> [B,...]."""

    def body(x, i):
        u = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return x + step_size * score(x, sigma) + jnp.sqrt(2.0 * step_size) * u, None

    return jax.lax.scan(body, x0, jnp.arange(n_steps))[0]


def annealed_langevin(
    score: Score,
    key: jax.Array,
    x0: jax.Array,
    sigmas: jax.Array,
    steps_per_sigma: int,
    eps: float,
    known: Known | None = None,
) -> jax.Array:
    """Annealed Langevin over levels sigmas [L], descending, then the Tweedie step.

    Level i runs steps_per_sigma steps of size a_i = eps sigma_i^2 (Song & Ermon's
    2e-5 sigma_i^2 / sigma_L^2 with sigma_L = 0.01 is eps = 0.2), known pixels pasted back at
    sigma_i after each; the end is x + sigma_L^2 s(x, sigma_L), the posterior mean of the clean
    data. L steps_per_sigma + 1 evaluations. x0: [B,...] -> [B,...].
    """
    sigmas = jnp.asarray(sigmas, x0.dtype)
    levels = jnp.repeat(sigmas, steps_per_sigma)
    last = sigmas[-1]
    k_steps, k_known = jax.random.split(key)

    def body(x, inp):
        i, sigma = inp
        a = eps * jnp.square(sigma)
        u = jax.random.normal(jax.random.fold_in(k_steps, i), x.shape, x.dtype)
        x = x + a * score(x, sigma) + jnp.sqrt(2.0 * a) * u
        return paste(x, known, sigma, jax.random.fold_in(k_known, i)), None

    x, _ = jax.lax.scan(body, x0, (jnp.arange(levels.shape[0]), levels))
    x = x + jnp.square(last) * score(x, last)
    return paste(x, known, jnp.zeros((), x.dtype), k_known)


def _corrector_step(x: jax.Array, s: jax.Array, key: jax.Array, snr: float) -> jax.Array:
    """One Langevin corrector step from x of score s, of size 2 (snr |z| / |s|)^2.

    As in Song et al.'s reference code the norms are batch means, which keeps the step finite
    when one sample sits on a mode (|s| = 0). The step is the same in xbar as in x = alpha xbar.
    """
    z = jax.random.normal(key, x.shape, x.dtype)
    s_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(s.reshape(s.shape[0], -1)), -1)))
    z_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(z.reshape(z.shape[0], -1)), -1)))
    step = 2.0 * jnp.square(snr * z_norm / jnp.maximum(s_norm, 1e-12))
    return x + step * s + jnp.sqrt(2.0 * step) * z


def langevin_corrector(
    score: Score, key: jax.Array, x: jax.Array, sigma: jax.Array, snr: float, n_steps: int
) -> jax.Array:
    """n_steps Langevin corrector steps at level sigma (step i's noise from fold_in(key, i))."""
    body = lambda i, x: _corrector_step(x, score(x, sigma), jax.random.fold_in(key, i), snr)
    return jax.lax.fori_loop(0, n_steps, body, x)


def predictor_corrector(
    score: Score,
    xbar: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    known: Known | None = None,
    snr: float = 0.16,
    n_corrector: int = 1,
) -> jax.Array:
    """Reverse-SDE sampling over sigmas [N+1] ending at 0. -> x0 [B,...].

    Each step but the last runs n_corrector Langevin corrector steps at sigma_i, then one
    Euler-Maruyama step to sigma_{i+1}; the last step, onto 0, is the noise-free mean, D.
    n_corrector = 0 is Euler-Maruyama alone. (N - 1) (1 + n_corrector) + 1 evaluations.
    The corrector and predictor steps of a level share one loop with one evaluation each, so a
    compiled sampler holds the network once.
    """

    def step(x, c, i, sigma, sigma_next, k):
        k_corr, k_pred = jax.random.split(k)
        var = jnp.square(sigma) - jnp.square(sigma_next)

        def predict(x, s):
            z = jax.random.normal(k_pred, x.shape, x.dtype)
            return x + var * s + jnp.where(sigma_next > 0, jnp.sqrt(var), 0.0) * z

        def one(j, x):  # j < n_corrector: a corrector step; j = n_corrector: the predictor
            s = score(x, sigma)
            correct = lambda: _corrector_step(x, s, jax.random.fold_in(k_corr, j), snr)
            return jax.lax.cond(j < n_corrector, correct, lambda: predict(x, s))

        first = jnp.where(sigma_next > 0, 0, n_corrector)  # no corrector before the step onto 0
        return jax.lax.fori_loop(first, n_corrector + 1, one, x), c

    return scan_grid(step, xbar, sigmas, key, known)[0]


def _vp_drift(score: Score):
    """dy/du of the probability-flow ODE in u = log sigma on y = xbar / sqrt(1 + sigma^2)."""

    def drift(y, u):
        sigma2 = jnp.exp(2.0 * u)
        c = jnp.sqrt(1.0 + sigma2)
        x = c * y
        return (-sigma2 * score(x, jnp.sqrt(sigma2)) - x * sigma2 / (1.0 + sigma2)) / c

    return drift


def probability_flow_rk4(
    score: Score,
    xbar: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    known: Known | None = None,
) -> jax.Array:
    """The probability-flow ODE by RK4 in u = log sigma over sigmas [N+1] ending at 0.

    The state is y = xbar / sqrt(1 + sigma^2), the variance-preserving scaling of unit-scale
    data: dy/du = (xbar - D) / c - xbar sigma^2 / c^3, c = sqrt(1 + sigma^2), whose linear part
    vanishes for data of unit variance at every sigma, so steps between log sigmas far apart
    stay accurate at both ends of a grid. Each step but the last is one RK4 step between
    consecutive log sigmas; the last, onto 0, is D. 4 (N - 1) + 1 evaluations.
    """

    drift = _vp_drift(score)

    def step(x, carry, i, sigma, sigma_next, k):
        def rk4():
            u = jnp.log(sigma)
            y = rk4_step(drift, x / jnp.sqrt(1.0 + sigma**2), u, jnp.log(sigma_next) - u)
            return y * jnp.sqrt(1.0 + sigma_next**2)

        denoised = lambda: x + jnp.square(sigma) * score(x, sigma)
        return jax.lax.cond(sigma_next > 0, rk4, denoised), carry

    return scan_grid(step, xbar, sigmas, key, known)[0]


def probability_flow_adaptive(
    score: Score,
    xbar: jax.Array,
    sigma_hi: float,
    sigma_lo: float,
    tol: float,
    max_steps: int,
) -> tuple[jax.Array, jax.Array]:
    """The probability-flow ODE from sigma_hi to sigma_lo by adaptive Dormand-Prince 5(4) in
    u = log sigma on y = xbar / sqrt(1 + sigma^2) (probability_flow_rk4's state), the whole
    batch as one system (one error norm, as Song et al. 2021 integrate it), rtol = atol = tol,
    then D at sigma_lo onto 0. -> (samples, evaluations): samples are NaN where the solver did
    not reach sigma_lo within max_steps attempts."""
    drift = _vp_drift(score)
    f = lambda y, u: drift(y[0], u[0])[None]
    u_hi, u_lo = math.log(sigma_hi), math.log(sigma_lo)
    y0 = (xbar / math.sqrt(1.0 + sigma_hi**2))[None]
    y, nfe, done = odeint_adaptive(f, y0, u_hi, u_lo, tol, tol, max_steps)
    x = y[0] * math.sqrt(1.0 + sigma_lo**2)
    x = x + sigma_lo**2 * score(x, jnp.float32(sigma_lo))
    return jnp.where(done[0], x, jnp.nan), nfe[0] + 1
