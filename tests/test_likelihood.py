"""Probability-flow ODE likelihoods of Gaussian data against closed forms, and bits/dim."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jldm.diffusion.likelihood import (
    bits_per_dim,
    dequantize,
    flow_likelihood,
    normal_logp,
    ode_likelihood,
    sde_drift,
)
from jldm.diffusion.odeint import odeint_adaptive
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
    logp, bpd, z, _, done = f(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
    assert np.all(done)
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
    logp, _, z, _, _ = jax.jit(
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
        logp, _, z, nfe, done = jax.jit(f)(jax.random.PRNGKey(0))
        assert np.all(done)
        return np.asarray(logp - sde.prior_logp(z), np.float64), int(nfe.max())

    adaptive, nfe = delta(None)
    np.testing.assert_allclose(adaptive, exact, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(x) * math.sqrt(c(sde.T) / c(EPS)),
        np.asarray(
            ode_likelihood(sde, score_fn, jax.random.PRNGKey(0), x, None, False, eps=EPS)[2]
        ),
        rtol=1e-3,
    )
    uniform, _ = delta(nfe // 4)  # RK4 at the batch's largest number of evaluations
    if name == "vp":  # std(t)^2 ~ beta_min t: the uniform grid's first step overshoots
        assert np.all(np.abs(uniform - exact) > 100 * np.abs(adaptive - exact))


def test_adaptive_error_control_is_per_image_so_batch_company_and_padding_do_not_matter():
    sde = SDES["vp"]
    rng = np.random.default_rng(5)
    # Images from 0.01 to 30 standard deviations out: with one step size and error norm for
    # the whole batch, an image's figure alone and in this batch differed by up to 2e-4
    # relative (images 6 and 7), 20 times the tolerance below.
    scales = np.geomspace(0.01, 30, 8)[:, None]
    x = MU + rng.normal(size=(8, D)) @ np.linalg.cholesky(SIGMA).T * scales
    x = jnp.asarray(x, jnp.float32)
    v = sample_probe(jax.random.PRNGKey(7), (8, D))
    drift = sde_drift(sde, gaussian_score(sde))
    # A loose tolerance, so that a different step sequence shows in the figures.
    f = jax.jit(lambda x, v: flow_likelihood(drift, sde.prior_logp, x, EPS, sde.T, v, tol=1e-3))
    batch = f(x, v)
    assert np.all(batch.done)
    pad = lambda a, i: jnp.concatenate([a[i : i + 1], jnp.zeros((5, D))])
    for i in (0, 6, 7):
        for one in (f(x[i : i + 1], v[i : i + 1]), f(pad(x, i), pad(v, i))):
            np.testing.assert_allclose(one.bpd[0], batch.bpd[i], rtol=1e-5, atol=1e-5)
            assert int(one.nfe[0]) == int(batch.nfe[i])


def test_adaptive_steps_are_each_samples_own():
    """dy/dt = -lam y with lam carried per sample: stiffer samples take more steps, and each
    sample's answer and evaluations are the ones it gets alone."""
    lam = jnp.array([0.5, 5.0, 50.0, 500.0])
    y0 = {"y": jnp.ones((4, 2)), "lam": lam}
    f = lambda s, t: {"y": -s["lam"][:, None] * s["y"], "lam": jnp.zeros_like(s["lam"])}
    out, nfe, done = odeint_adaptive(f, y0, 0.0, 0.1, 1e-6, 1e-6)
    assert np.all(done) and np.all(np.diff(np.asarray(nfe)) > 0)
    # the local tolerance 1e-6 accumulates to a global error of a few 1e-7 over the steps
    np.testing.assert_allclose(out["y"][:, 0], np.exp(-0.1 * np.asarray(lam)), atol=1e-6)
    for i in range(4):
        one = {"y": y0["y"][i : i + 1], "lam": lam[i : i + 1]}
        y, n, _ = odeint_adaptive(f, one, 0.0, 0.1, 1e-6, 1e-6)
        assert int(n[0]) == int(nfe[i])
        # the same steps: equal up to float32 rounding, far below the tolerance
        np.testing.assert_allclose(y["y"], out["y"][i : i + 1], rtol=1e-6, atol=1e-8)


def test_the_solver_flags_images_it_stopped_at_max_steps():
    sde = SDES["vp"]
    x = jnp.asarray(MU + np.zeros((2, D)), jnp.float32)
    f = lambda m: ode_likelihood(sde, gaussian_score(sde), None, x, None, False, max_steps=m)
    short, full = f(3), f(2000)
    assert not np.any(short.done) and np.all(full.done)
    assert np.all(short.nfe == 1 + 6 * 3)


def test_bits_per_dim_follow_the_data_range_passed_through():
    """The same 8-bit data as N(m, s^2) on [-1, 1] and as N((m+1)/2, s^2/4) on [0, 1].

    Each matches its closed form -log2 p_eps(y) / D + log2(levels / (hi - lo)), p_eps(y) =
    N(y; a m, a^2 s^2 + std^2), up to the prior's stand-in error at T (seen from z, as in
    `reference`); the two agree to that error, which is all that separates them.
    """
    sde, m, s, d = SDES["vp"], 0.2, 0.3, 4
    x = jnp.asarray(m + s * np.random.default_rng(6).normal(size=(5, d)), jnp.float32)
    a_e, sd_e = (float(v) for v in sde.mean_coef_std(jnp.float32(EPS)))
    a_1, sd_1 = (float(v) for v in sde.mean_coef_std(jnp.float32(sde.T)))
    out = {}
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0)):
        scale = (hi - lo) / 2
        mean, std = lo + (m + 1) * scale, s * scale

        def score(y, t, mean=mean, std=std):
            a, sd = sde.mean_coef_std(t)
            return -(y - a[:, None] * mean) / (a[:, None] ** 2 * std**2 + sd[:, None] ** 2)

        y = lo + (x + 1) * scale
        got = ode_likelihood(sde, score, None, y, None, False, eps=EPS, data_range=(lo, hi))
        y64, z = np.asarray(y, np.float64), np.asarray(got.z, np.float64)
        exact = stats.norm.logpdf(y64, a_e * mean, np.hypot(a_e * std, sd_e)).sum(-1)
        prior_error = stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(
            z, a_1 * mean, np.hypot(a_1 * std, sd_1)
        ).sum(-1)
        closed = lambda logp, lo=lo, hi=hi: -logp / (d * math.log(2)) + math.log2(256 / (hi - lo))
        np.testing.assert_allclose(got.bpd, closed(exact + prior_error), atol=1e-4)
        np.testing.assert_allclose(got.bpd, closed(exact), atol=0.01)
        out[lo] = np.asarray(got.bpd)
    np.testing.assert_allclose(out[0.0], out[-1.0], atol=0.01)
    # The range is what the figure depends on: a wrong one is off by log2 of the ratio.
    wrong = ode_likelihood(sde, score, None, y, None, False, eps=EPS)  # [-1, 1] assumed
    np.testing.assert_allclose(wrong.bpd, out[0.0] - 1.0, atol=1e-5)


@pytest.mark.parametrize("direction", ["noise_at_1", "noise_at_0"])
def test_generic_flow_matching_drift_gives_the_exact_gaussian_likelihood(direction):
    """Linear path x_t = (1 - t) x0 + t z, x0 ~ N(m, s^2 I): p_t = N((1 - t) m, c_t I) with
    c_t = (1 - t)^2 s^2 + t^2, velocity v = -m + (c_t' / 2 c_t)(x - (1 - t) m), and p_1 = N(0, I)
    is the prior itself, so log p_0(x) comes out exact. Run backwards in time too (data at 1)."""
    m, s, d = 0.4, 0.5, 3

    def velocity(x, t):
        t = t[:, None]
        c = (1 - t) ** 2 * s**2 + t**2
        return -m + (t - (1 - t) * s**2) / c * (x - (1 - t) * m)

    drift = velocity
    t0, t1 = 0.0, 1.0
    if direction == "noise_at_0":  # tau = 1 - t: data at tau = 1, noise at tau = 0
        drift = lambda x, tau: -velocity(x, 1.0 - tau)
        t0, t1 = 1.0, 0.0
    x = jnp.asarray(m + s * np.random.default_rng(8).normal(size=(6, d)), jnp.float32)
    got = flow_likelihood(drift, normal_logp, x, t0, t1)
    exact = stats.norm.logpdf(np.asarray(x, np.float64), m, s).sum(-1)
    np.testing.assert_allclose(got.logp, exact, atol=2e-4)
    assert np.all(got.done)


def test_generic_edm_drift_against_the_closed_form():
    """dx/dsigma = (x - D(x, sigma)) / sigma, D the exact denoiser of N(m, s^2 I) data:
    p_sigma = N(m, (s^2 + sigma^2) I), prior N(0, sigma_max^2 I) stands in at sigma_max."""
    m, s, d, lo, hi = 0.3, 0.5, 3, 0.002, 80.0

    def drift(x, sigma):
        sigma = sigma[:, None]
        denoised = m + s**2 / (s**2 + sigma**2) * (x - m)
        return (x - denoised) / sigma

    x = jnp.asarray(m + s * np.random.default_rng(9).normal(size=(4, d)), jnp.float32)
    prior = functools.partial(normal_logp, std=hi)
    got = flow_likelihood(drift, prior, x, lo, hi)
    z = np.asarray(got.z, np.float64)
    np.testing.assert_allclose(
        z, m + (np.asarray(x) - m) * np.sqrt((s**2 + hi**2) / (s**2 + lo**2)), rtol=1e-3
    )
    exact = stats.norm.logpdf(np.asarray(x, np.float64), m, np.sqrt(s**2 + lo**2)).sum(-1)
    mismatch = stats.norm.logpdf(z, 0, hi).sum(-1) - stats.norm.logpdf(
        z, m, np.sqrt(s**2 + hi**2)
    ).sum(-1)
    np.testing.assert_allclose(got.logp, exact + mismatch, atol=2e-4)


# A trained run's bits/dim (jldm.sampling.likelihood) with a stand-in network that is the exact
# model of data N(GM, GS^2) per pixel, so that the figures have closed forms.
GM, GS = 0.1, 0.5


class _Exact:
    """Stands in for the UNet: apply(vars, x_in, time_in, labels, ...) = fn(x_in, time_in)."""

    def __init__(self, fn):
        self.fn = fn

    def apply(self, variables, x, t, labels, train=False, rngs=None):
        return self.fn(x, t)


def _run(objective, **over):
    from jldm.build.noise import build_schedule, build_sde
    from jldm.runs.load import Loaded
    from tests.tiny import tiny_config

    sampler = {"ddpm": "ddim", "edm": "heun", "flow": "euler"}.get(objective, "pc")
    config = tiny_config(
        "/unused", **{"diffusion.objective": objective, "sample.sampler": sampler, **over}
    )
    schedule = build_schedule(config)
    if objective == "ddpm":  # the exact eps of the posterior mean E[x0 | x_t]

        def fn(x, t):
            a = jnp.sqrt(schedule.alphas_cumprod[t])[:, None, None, None]
            s = jnp.sqrt(1 - schedule.alphas_cumprod[t])[:, None, None, None]
            x0 = GM + a * GS**2 / (a**2 * GS**2 + s**2) * (x - a * GM)
            return (x - a * x0) / s

    elif objective == "edm":  # F = (D - c_skip x) / c_out of the exact denoiser
        from jldm.diffusion import edm

        sd = config.diffusion.sigma_data

        def fn(x_in, t_in):
            log_sigma = 4 * (t_in / 999.0 * (edm._C_HI - edm._C_LO) + edm._C_LO)
            c_skip, c_out, c_in, _ = edm.preconditioning(jnp.exp(log_sigma), sd)
            c_skip, c_out, c_in, var = (
                v[:, None, None, None] for v in (c_skip, c_out, c_in, jnp.exp(2 * log_sigma))
            )
            x = x_in / c_in
            return (GM + GS**2 / (GS**2 + var) * (x - GM) - c_skip * x) / c_out

    elif objective == "flow":  # the exact velocity of the linear path, time input 999 t

        def fn(x, t_in):
            t = (t_in / 999.0)[:, None, None, None]
            c = (1 - t) ** 2 * GS**2 + t**2
            return -GM + (t - (1 - t) * GS**2) / c * (x - (1 - t) * GM)

    else:  # the network's u = -std * score, seen through c_in = 1 (VP) and time 999 t
        sde = build_sde(config)

        def fn(x, t_in):
            a, std = (v[:, None, None, None] for v in sde.mean_coef_std(t_in / 999.0))
            return std * (x - a * GM) / (a**2 * GS**2 + std**2)

    return Loaded(config, _Exact(fn), None, schedule, 0)


def _images(n):
    x = GM + GS * np.random.default_rng(11).normal(size=(n, 8, 8, 1))
    return np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)


def _dequantized(u8):
    """Image i dequantised from fold_in(fold_in(PRNGKey(0), i), 0) (the module's rule)."""
    from jldm.diffusion.likelihood import dequantize as deq

    keys = [jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), i), 0) for i in range(5)]
    return np.stack(
        [np.asarray(deq(k, jnp.asarray(p)), np.float64) for k, p in zip(keys, u8, strict=True)]
    )


def test_a_runs_ode_bits_per_dim_match_the_closed_form_whatever_the_batching():
    from jldm.errors import UserError
    from jldm.sampling.likelihood import bits_per_dim as run_bpd

    run, u8 = _run("vpsde"), _images(5)
    bpd, nfe = run_bpd(run, u8, batch_size=3, with_nfe=True)
    # alone, and in batches of 3 of which the last is padded
    np.testing.assert_allclose(run_bpd(run, u8, batch_size=1), bpd, rtol=1e-5, atol=1e-5)
    assert nfe.shape == (5,) and np.all(nfe > 20)
    x = _dequantized(u8)
    sde, eps = SDES["vp"], run.config.diffusion.eps_t
    a, sd = (float(v) for v in sde.mean_coef_std(jnp.float32(eps)))
    exact = stats.norm.logpdf(x, a * GM, np.hypot(a * GS, sd)).reshape(5, -1).sum(-1)
    # The Rademacher probe is exact here (the drift's Jacobian is a multiple of I); the prior
    # N(0, I) stands in for p_T = N(alpha_T GM, ~1): a few 1e-5 bits/dim.
    np.testing.assert_allclose(bpd, -exact / (64 * math.log(2)) + 7, atol=2e-4)
    with pytest.raises(UserError, match="max_steps=2 .* raise max_steps or tol"):
        run_bpd(run, u8, max_steps=2)


def test_edm_and_flow_runs_bits_per_dim_match_the_closed_form():
    """EDM: p_sigma_min = N(GM, GS^2 + sigma_min^2) per pixel, and the prior N(0, sigma_max^2 +
    sigma_data^2) stands in for N(GM, GS^2 + sigma_max^2) at z = x(sigma_max), known in closed
    form. Flow: N(0, I) at t = 1 is exact, so bits/dim are those of N(GM, GS^2) itself. The
    Rademacher probe is exact for both (the drifts' Jacobians are multiples of I)."""
    from jldm.sampling.likelihood import bits_per_dim as run_bpd
    from jldm.sampling.likelihood import method

    u8 = _images(5)
    x = _dequantized(u8)
    edm_run = _run("edm", **{"diffusion.sigma_data": GS})
    flow_run = _run("flow")
    assert method(edm_run.config) == method(flow_run.config) == "ode"
    f = edm_run.config.diffusion
    lo, hi = f.sigma_min, f.sigma_max
    z = GM + (x - GM) * np.sqrt((GS**2 + hi**2) / (GS**2 + lo**2))
    logp = {
        "edm": stats.norm.logpdf(x, GM, np.hypot(GS, lo))
        + stats.norm.logpdf(z, 0, np.hypot(hi, GS))
        - stats.norm.logpdf(z, GM, np.hypot(GS, hi)),
        "flow": stats.norm.logpdf(x, GM, GS),
    }
    for name, run in (("edm", edm_run), ("flow", flow_run)):
        bpd, nfe = run_bpd(run, u8, batch_size=3, with_nfe=True)
        exact = -logp[name].reshape(5, -1).sum(-1) / (64 * math.log(2)) + 7
        np.testing.assert_allclose(bpd, exact, atol=3e-4, err_msg=name)
        assert np.all(nfe > 10), (name, nfe)


def test_a_ddpm_run_gets_its_variational_bound_with_its_evaluations():
    from jldm.diffusion.vlb import pixels_to_data, vlb
    from jldm.errors import UserError
    from jldm.sampling.likelihood import bits_per_dim as run_bpd

    run, u8 = _run("ddpm", **{"diffusion.timesteps": 20}), _images(5)
    bpd, nfe = run_bpd(run, u8, batch_size=2, with_nfe=True)  # the last batch padded
    assert np.all(nfe == 20)
    # The same bound from jldm.diffusion.vlb in one batch, each image's key
    # fold_in(PRNGKey(0), i).
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(5)])
    model_fn = lambda x, t: run.model.apply(None, x, t, None)
    nats, _ = vlb(model_fn, run.schedule, "eps", pixels_to_data(jnp.asarray(u8)), keys)
    np.testing.assert_allclose(bpd, np.asarray(nats) / (64 * math.log(2)), rtol=1e-5)
    # The stratified estimate costs its terms (its mean is tested in test_vlb).
    est, few = run_bpd(run, u8, terms=5, with_nfe=True)
    assert np.all(few == 5) and np.all(np.isfinite(est)) and np.any(est != bpd)
    with pytest.raises(UserError, match="objective 'ncsn' has none"):
        run_bpd(_run("ncsn", **{"sample.sampler": "als"}), u8)
