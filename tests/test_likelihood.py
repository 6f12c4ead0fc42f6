"""Probability-flow ODE likelihoods of Gaussian data against closed forms, and bits/dim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jldm.diffusion.likelihood import bits_per_dim, dequantize, ode_likelihood
from jldm.diffusion.score_losses import sample_probe
from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
D, EPS = 3, 1e-5
MU = np.array([0.3, -0.5, 0.8])
_L = np.random.default_rng(0).normal(size=(D, D))
SIGMA = 0.3 * _L @ _L.T + 0.05 * np.eye(D)  # correlated, so Hutchinson's estimate has variance
LAM, U = np.linalg.eigh(SIGMA)


def marginal_var(sde, t):
    """(alpha(t), eigenvalues of Cov x_t = alpha^2 Sigma + std^2 I), both float64."""
    a, std = (float(v) for v in sde.mean_coef_std(jnp.float32(t)))
    return a, a**2 * LAM + std**2


def gaussian_score(sde):
    """Exact score of p_t for data N(MU, SIGMA): -C_t^{-1} (x - a MU), C_t diagonal in U."""
    mu, u, lam = (jnp.asarray(v, jnp.float32) for v in (MU, U, LAM))

    def score_fn(x, t):
        a, std = sde.mean_coef_std(t)
        c = a[:, None] ** 2 * lam + std[:, None] ** 2
        return -(((x - a[:, None] * mu) @ u) / c) @ u.T

    return score_fn


def log_normal(x, mean, lam):
    """log N(x; mean, U diag(lam) U^T), float64. x: [B, D] -> [B]."""
    return stats.multivariate_normal(mean, U @ np.diag(lam) @ U.T).logpdf(x)


def reference(sde, x, z):
    """log p_eps(x) in closed form, plus the prior's stand-in error at T seen from z = x(T).

    The ODE returns prior_logp(z) + int div; the exact flow gives log p_T(z) + int div =
    log p_eps(x), so the ODE's answer is log p_eps(x) + prior_logp(z) - log p_T(z).
    """
    a_e, lam_e = marginal_var(sde, EPS)
    a_1, lam_1 = marginal_var(sde, sde.T)
    prior = stats.norm.logpdf(z, scale=sde.prior_std).sum(-1)
    exact = log_normal(x, a_e * MU, lam_e)
    z_flow = a_1 * MU + ((x - a_e * MU) @ U * np.sqrt(lam_1 / lam_e)) @ U.T
    return exact + prior - log_normal(z, a_1 * MU, lam_1), exact, z_flow


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_likelihood_matches_the_gaussian_closed_form(name):
    sde = SDES[name]
    x = MU + np.random.default_rng(1).normal(size=(8, D)) @ np.linalg.cholesky(SIGMA).T
    calls = []
    score = gaussian_score(sde)
    score_fn = lambda x, t: calls.append(1) or score(x, t)
    f = jax.jit(lambda k, x: ode_likelihood(sde, score_fn, k, x, 50, hutchinson=False, eps=EPS))
    logp, bpd, z, _ = f(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
    traces = len(calls)
    f(jax.random.PRNGKey(1), jnp.asarray(x[::-1], jnp.float32))
    assert len(calls) == traces, "ode_likelihood retraced"
    ref, exact, z_flow = reference(sde, x, np.asarray(z, np.float64))
    np.testing.assert_allclose(z, z_flow, rtol=1e-3, atol=1e-3 * sde.prior_std)
    # 50 RK4 steps in float32: the integrated divergence is good to ~1e-4 nats.
    np.testing.assert_allclose(logp, ref, atol=2e-3)
    # The prior stands in for p_T well: under 0.02 nats from the exact log p_eps here.
    np.testing.assert_allclose(logp, exact, atol=0.02)
    np.testing.assert_allclose(bpd, -np.asarray(logp) / (D * math.log(2)) + 7, rtol=1e-6)


@pytest.mark.parametrize(("name", "probe"), [("vp", "rademacher"), ("ve", "gaussian")])
def test_hutchinson_likelihood_holds_its_probe_and_is_unbiased(name, probe):
    sde, reps, key = SDES[name], 256, jax.random.PRNGKey(3)
    x = MU + np.random.default_rng(2).normal(size=(2, D)) @ np.linalg.cholesky(SIGMA).T
    xs = jnp.asarray(np.repeat(x, reps, axis=0), jnp.float32)  # one probe per copy
    logp, _, z, _ = jax.jit(
        lambda k: ode_likelihood(sde, gaussian_score(sde), k, xs, 50, probe=probe, eps=EPS)
    )(key)
    # The drift's Jacobian U diag(c'/2c) U^T does not depend on x, so with a fixed probe v
    # the estimate of int div is exactly v^T M v, M = U diag(log(c_T / c_eps) / 2) U^T.
    _, lam_e = marginal_var(sde, EPS)
    _, lam_1 = marginal_var(sde, sde.T)
    m = U @ np.diag(0.5 * np.log(lam_1 / lam_e)) @ U.T
    v = np.asarray(sample_probe(key, xs.shape, probe), np.float64)
    delta = np.asarray(logp - sde.prior_logp(z), np.float64)
    np.testing.assert_allclose(delta, np.einsum("bi,ij,bj->b", v, m, v), rtol=1e-3, atol=1e-3)
    logp = np.asarray(logp, np.float64).reshape(2, reps)
    ref, _, _ = reference(sde, x, np.asarray(z, np.float64)[::reps])
    se = logp.std(1) / np.sqrt(reps)
    assert np.all(se > 1e-3)  # the probes do vary the estimate
    assert np.all(np.abs(logp.mean(1) - ref) < 4 * se + 2e-3), (logp.mean(1), ref, se)


def test_bits_per_dim_of_uniform_8bit_data_is_8():
    # The uniform density on [-1, 1]^D is 2^-D; on 256 levels that is log2(256) = 8 bits/dim.
    dim = 12
    assert float(bits_per_dim(jnp.array([-dim * math.log(2.0)]), dim)[0]) == pytest.approx(8.0)
    # On [0, 1] the same data cost log2(256) - 0 = 8 bits too: density 1 there.
    assert float(bits_per_dim(jnp.zeros(1), dim, lo=0.0, hi=1.0)[0]) == pytest.approx(8.0)


def test_dequantize_fills_each_pixel_bin():
    pixels = jnp.repeat(jnp.array([0, 127, 255], jnp.uint8), 1000)
    y = np.asarray(dequantize(jax.random.PRNGKey(0), pixels)).reshape(3, 1000)
    lo = np.array([0, 127, 255])[:, None] / 128.0 - 1.0
    assert np.all(y >= lo) and np.all(y < lo + 1 / 128.0)
    np.testing.assert_allclose(y.mean(1), lo[:, 0] + 0.5 / 128, atol=2e-4)


@pytest.mark.parametrize("name", list(SDES))
def test_adaptive_likelihood_matches_the_closed_form_and_beats_a_uniform_grid_on_sharp_data(name):
    """Data N(0, s^2 I) with s at the scale of 8-bit pixel bins: the flow is stiff near eps.

    Here c_t = alpha^2 s^2 + std^2 and the flow scales x by sqrt(c_t / c_eps), so the integrated
    divergence is exactly 0.5 D log(c_T / c_eps).
    """
    sde, s, d = SDES[name], 0.004, 4

    def c(t):
        a, std = (float(v) for v in sde.mean_coef_std(jnp.float32(t)))
        return a**2 * s**2 + std**2

    def score_fn(x, t):
        a, std = sde.mean_coef_std(t)
        return -x / (a[:, None] ** 2 * s**2 + std[:, None] ** 2)

    x = jnp.asarray(s * np.random.default_rng(4).normal(size=(5, d)), jnp.float32)
    exact = 0.5 * d * math.log(c(sde.T) / c(EPS))

    def delta(n_steps):
        f = lambda k: ode_likelihood(sde, score_fn, k, x, n_steps, False, eps=EPS)
        logp, _, z, nfe = jax.jit(f)(jax.random.PRNGKey(0))
        return np.asarray(logp - sde.prior_logp(z), np.float64), int(nfe)

    adaptive, nfe = delta(None)
    np.testing.assert_allclose(adaptive, exact, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(x) * math.sqrt(c(sde.T) / c(EPS)),
        np.asarray(
            ode_likelihood(sde, score_fn, jax.random.PRNGKey(0), x, None, False, eps=EPS)[2]
        ),
        rtol=1e-3,
    )
    uniform, _ = delta(nfe // 4)  # RK4 at the same number of evaluations
    if name == "vp":  # std(t)^2 ~ beta_min t: the uniform grid's first step overshoots
        assert np.all(np.abs(uniform - exact) > 100 * np.abs(adaptive - exact))
