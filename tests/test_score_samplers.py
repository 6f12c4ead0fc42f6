"""Score-based samplers with exact scores: mixture modes and weights, Gaussian moments and flow
maps, one compilation per sampler, and determinism given the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.diffusion import toy
from jldm.diffusion.score_losses import geometric_sigmas
from jldm.diffusion.score_samplers import (
    annealed_langevin,
    langevin,
    ode_sample,
    odeint_fixed,
    pc_sample,
)
from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def counted(fn):
    """fn with a counter of its Python calls, i.e. of its traces under jit."""

    def wrapped(*args):
        wrapped.calls += 1
        return fn(*args)

    wrapped.calls = 0
    return wrapped


def run_twice(sampler, score_fn):
    """Jit sampler(key); run keys 0, 1, 0. Asserts one trace and determinism. -> two outputs."""
    f = jax.jit(sampler)
    a = f(jax.random.PRNGKey(0))
    traces = score_fn.calls
    assert traces > 0
    b = f(jax.random.PRNGKey(1))
    again = f(jax.random.PRNGKey(0))
    assert score_fn.calls == traces, "sampler retraced for a new key"
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, again)
    first = lambda o: o[0] if isinstance(o, tuple) else o
    assert float(jnp.abs(first(a) - first(b)).max()) > 1e-3
    return a, b


def fractions(mix, x):
    return np.bincount(np.asarray(mix.nearest_mode(x)), minlength=mix.weights.shape[0]) / len(x)


def test_langevin_with_the_exact_score_recovers_means_and_weights():
    # Overlapping modes, so the chains mix between them in 1000 steps of 0.02 (time 20).
    mix = toy.gaussian_mixture([[-1.5, 0.0], [1.5, 0.0], [0.0, 2.0]], 0.6, [0.5, 0.3, 0.2])
    score_fn = counted(lambda x, c: mix.score(x))
    x0 = jnp.zeros((2000, 2))
    a, b = run_twice(lambda k: langevin(score_fn, k, x0, 0.02, 1000), score_fn)
    x = np.concatenate([a, b])
    # Nearest-mode assignment misfiles overlapping tails; exact draws give the fractions and
    # per-mode means that a perfect sampler would show.
    rng = np.random.default_rng(0)
    comp = rng.choice(3, 100_000, p=np.asarray(mix.weights))
    ref = np.asarray(mix.means)[comp] + 0.6 * rng.normal(size=(100_000, 2))
    np.testing.assert_allclose(fractions(mix, x), fractions(mix, ref), atol=0.03)
    lab, ref_lab = np.asarray(mix.nearest_mode(x)), np.asarray(mix.nearest_mode(ref))
    for k in range(3):
        np.testing.assert_allclose(x[lab == k].mean(0), ref[ref_lab == k].mean(0), atol=0.08)
    np.testing.assert_allclose(x.std(0), ref.std(0), rtol=0.05)


def test_annealed_langevin_covers_all_modes_where_plain_langevin_is_stuck():
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    ring = toy.ring(4, 4.0, 0.3, weights)  # modes 5.7 apart, 19 stds
    x0 = jnp.tile(ring.means[3:4], (2000, 1))  # every chain starts on the lightest mode
    sigmas = geometric_sigmas(10.0, 0.05, 10)
    score_fn = counted(lambda x, c: ring.score(x, c))
    a, b = run_twice(lambda k: annealed_langevin(score_fn, k, x0, sigmas, 100, 2e-4), score_fn)
    x = np.concatenate([a, b])
    # 4000 chains: a weight's standard error is <= 0.008. Annealing itself leans towards equal
    # weights (measured: 0.383, 0.296, 0.208, 0.113): occupancy freezes at a middle sigma where
    # heavy modes' tails still spill into light modes' basins. Hence 0.04 and the order check.
    frac = fractions(ring, x)
    np.testing.assert_allclose(frac, weights, atol=0.04)
    assert np.all(np.diff(frac) < 0)
    # After the denoising step samples sit on the modes (mean distance of N(0, 0.3^2 I) is 0.38).
    dist = np.linalg.norm(x - np.asarray(ring.means)[np.asarray(ring.nearest_mode(x))], axis=-1)
    assert dist.mean() < 0.45
    stuck = langevin(lambda x, c: ring.score(x), jax.random.PRNGKey(0), x0, 0.01, 300)
    assert fractions(ring, stuck)[3] > 0.99


def gaussian_score(sde, mu, s):
    """Exact score of p_t when the data are N(mu, s^2 I): x_t ~ N(a mu, (a^2 s^2 + std^2) I)."""

    def score_fn(x, t):
        a, std = sde.mean_coef_std(t)
        a, std = a[:, None], std[:, None]
        return -(x - a * mu) / (a**2 * s**2 + std**2)

    return score_fn


@pytest.mark.parametrize("name", list(SDES))
def test_pc_sampler_reproduces_gaussian_data(name):
    sde, mu, s = SDES[name], 0.5, 0.6
    score_fn = counted(gaussian_score(sde, mu, s))
    sampler = lambda k: pc_sample(sde, score_fn, k, (2000, 2), 100, snr=0.16, n_corrector=1)
    (a, nfe), (b, _) = run_twice(sampler, score_fn)
    assert int(nfe) == 201  # with the final denoising step
    x = np.concatenate([a, b]).ravel()
    # 8000 values: standard errors 0.007 (mean) and 0.005 (std); 0.03 covers 100 EM steps.
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - s) < 0.03, (x.mean(), x.std())


@pytest.mark.parametrize("name", list(SDES))
def test_ode_sampler_follows_the_gaussian_flow_map(name):
    sde, mu, s, eps = SDES[name], 0.5, 0.6, 1e-3
    score_fn = counted(gaussian_score(sde, mu, s))
    sampler = lambda k: ode_sample(sde, score_fn, k, (2000, 2), 25, denoise=False)
    (a, nfe), (b, _) = run_twice(sampler, score_fn)
    assert int(nfe) == 100
    # The flow of N(mu, s^2) data scales deviations by the ratio of marginal stds.
    var = lambda t: (lambda a, std: (a, a**2 * s**2 + std**2))(*sde.mean_coef_std(jnp.float32(t)))
    (a1, v1), (ae, ve) = var(sde.T), var(eps)
    z = sde.prior_sample(jax.random.PRNGKey(0), (2000, 2))
    expected = ae * mu + jnp.sqrt(ve / v1) * (z - a1 * mu)
    np.testing.assert_allclose(a, expected, atol=2e-3)
    x = np.concatenate([a, b]).ravel()
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - s) < 0.03, (x.mean(), x.std())


@pytest.mark.parametrize("name", list(SDES))
def test_final_denoising_step_is_the_gaussian_posterior_mean(name):
    """Stopping at sigma(eps) = std/alpha = 0.3, the ODE's x_eps has mean a mu and variance
    v = a^2 s^2 + std^2 (data plus noise); the Tweedie step maps it to E[x0 | x_eps] = mu +
    a s^2 / v (x_eps - a mu), mean mu and variance a^2 s^4 / v: the data's minus the posterior
    variance, as far below s^2 (to first order in sigma^2) as x_eps / a is above it."""
    sde, mu, s = SDES[name], 0.5, 0.6
    score_fn = gaussian_score(sde, mu, s)
    eps = float(sde.edm_time(jnp.float32(0.3)))
    a, std = (float(v) for v in sde.mean_coef_std(jnp.float32(eps)))
    v = a**2 * s**2 + std**2
    key = jax.random.PRNGKey(0)
    noisy, nfe = ode_sample(sde, score_fn, key, (4000, 1), 25, eps, denoise=False)
    clean, nfe_clean = ode_sample(sde, score_fn, key, (4000, 1), 25, eps)
    assert (int(nfe), int(nfe_clean)) == (100, 101)
    noisy, clean = np.asarray(noisy, np.float64), np.asarray(clean, np.float64)
    np.testing.assert_allclose(clean, mu + a * s**2 / v * (noisy - a * mu), atol=1e-4)
    # 4000 draws: standard errors 0.01 (mean) and 0.007 (std); the flow map is exact to 1e-3.
    assert abs(noisy.mean() - a * mu) < 0.03 and abs(noisy.std() - np.sqrt(v)) < 0.02
    assert abs(clean.mean() - mu) < 0.03 and abs(clean.std() - a * s**2 / np.sqrt(v)) < 0.02
    assert noisy.std() / a - s > 0.03 and s - clean.std() > 0.03


@pytest.mark.parametrize("n_corrector", [0, 1])
def test_pc_and_em_end_on_the_posterior_mean_of_their_last_state(n_corrector):
    sde, mu, s = SDES["vp"], 0.5, 0.6
    score_fn = gaussian_score(sde, mu, s)
    eps = float(sde.edm_time(jnp.float32(0.3)))
    a, std = (float(v) for v in sde.mean_coef_std(jnp.float32(eps)))
    run = lambda denoise: pc_sample(
        sde, score_fn, jax.random.PRNGKey(1), (500, 1), 20, 0.16, n_corrector, eps, denoise
    )
    (noisy, nfe), (clean, nfe_clean) = run(False), run(True)
    assert (int(nfe), int(nfe_clean)) == (20 * (1 + n_corrector), 20 * (1 + n_corrector) + 1)
    v = a**2 * s**2 + std**2
    np.testing.assert_allclose(clean, mu + a * s**2 / v * (noisy - a * mu), atol=1e-4)


@pytest.mark.parametrize("method", ["rk4", "heun"])
def test_fixed_step_solver_order(method):
    # dy/dt = -2 t y on a pytree, exact y(1) = y(0) exp(-1); halving h divides the error by 2^p.
    f = lambda y, t: jax.tree_util.tree_map(lambda v: -2.0 * t * v, y)
    y0 = {"a": jnp.float32(1.0), "b": jnp.ones(2)}
    errs = [abs(float(odeint_fixed(f, y0, 0.0, 1.0, n, method)["a"]) - np.exp(-1)) for n in (4, 8)]
    order = np.log2(errs[0] / errs[1])
    assert order == pytest.approx(4.0 if method == "rk4" else 2.0, abs=0.5), errs
    back = odeint_fixed(f, odeint_fixed(f, y0, 0.0, 1.0, 50, method), 1.0, 0.0, 50, method)
    np.testing.assert_allclose(back["b"], 1.0, atol=1e-3)
