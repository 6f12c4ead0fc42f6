"""Score-based samplers with exact scores: mixture modes and weights, Gaussian moments and flow
maps, one compilation per sampler, determinism given the key, and their evaluation counts.

The SDE samplers run in the EDM frame xbar = x0 + sigma n (jldm.diffusion.frame): an SDE's
exact score s(x, t) is read as a denoiser by sde_frame and back as the score of xbar at sigma.
For data N(mu, s^2 I), xbar at sigma is N(mu, (s^2 + sigma^2) I), its probability flow scales
xbar - mu by sqrt(s^2 + sigma^2), and D(xbar, sigma) = mu + s^2 / (s^2 + sigma^2) (xbar - mu).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.diffusion import frame as fr
from jldm.diffusion import toy
from jldm.diffusion.odeint import odeint_adaptive, odeint_fixed
from jldm.diffusion.score_losses import geometric_sigmas
from jldm.diffusion.score_samplers import (
    annealed_langevin,
    langevin,
    predictor_corrector,
    probability_flow_rk4,
)
from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def counted(fn, evals: bool = False):
    """fn with a counter of its Python calls (.calls, i.e. its traces under jit) and, with
    evals, of its evaluations as they run (.evals; call jax.effects_barrier() first)."""

    def wrapped(*args):
        wrapped.calls += 1
        if evals:
            jax.debug.callback(lambda: setattr(wrapped, "evals", wrapped.evals + 1))
        return fn(*args)

    wrapped.calls, wrapped.evals = 0, 0
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
    a, b = run_twice(lambda k: langevin(score_fn, k, x0, 0.02, 1000, 0.0), score_fn)
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
    score_fn = counted(lambda x, sigma: ring.score(x, sigma))
    # steps of 0.08 sigma_i^2: 2e-4 (sigma_i / sigma_L)^2 at sigma_L = 0.05
    a, b = run_twice(lambda k: annealed_langevin(score_fn, k, x0, sigmas, 100, 0.08), score_fn)
    x = np.concatenate([a, b])
    # 4000 chains: a weight's standard error is <= 0.008. Annealing itself leans towards equal
    # weights (measured on 20000 chains: 0.381, 0.297, 0.209, 0.113): occupancy freezes at a
    # middle sigma where heavy modes' tails still spill into light modes' basins. Hence 0.04
    # and the order check.
    frac = fractions(ring, x)
    np.testing.assert_allclose(frac, weights, atol=0.04)
    assert np.all(np.diff(frac) < 0)
    # After the denoising step samples sit on the modes (mean distance of N(0, 0.3^2 I) is 0.38).
    dist = np.linalg.norm(x - np.asarray(ring.means)[np.asarray(ring.nearest_mode(x))], axis=-1)
    assert dist.mean() < 0.45
    stuck = langevin(lambda x, c: ring.score(x), jax.random.PRNGKey(0), x0, 0.01, 300, 0.0)
    assert fractions(ring, stuck)[3] > 0.99


def gaussian_score(sde, mu, s):
    """Exact score of p_t when the data are N(mu, s^2 I): x_t ~ N(a mu, (a^2 s^2 + std^2) I)."""

    def score_fn(x, t):
        a, std = sde.mean_coef_std(t)
        a, std = a[:, None], std[:, None]
        return -(x - a * mu) / (a**2 * s**2 + std**2)

    return score_fn


def sde_grid(sde, points: int, eps: float = 1e-3, zero: bool = True):
    """(frame, sigmas): the SDE's native grid (uniform in t) of `points` sigmas from
    min(sigma_T, 80) down to sigma(eps), then 0 unless zero is False."""
    frame = fr.sde_frame(sde, eps)
    sigmas = fr.native_sigmas(frame, points, fr.start_sigma(frame, 80.0))
    return frame, fr.with_zero(sigmas) if zero else np.asarray(sigmas, np.float32)


def sde_sampler(solve, frame, score_fn, shape, sigmas, **kw):
    """key -> solve(score, xbar ~ the frame's prior at sigmas[0], sigmas, key, **kw)."""
    score, start = fr.score_of(frame.denoiser(score_fn)), float(sigmas[0])

    def go(key):
        k_init, k_run = jax.random.split(key)
        xbar = fr.prior(frame, k_init, shape, start)
        return solve(score, xbar, sigmas, k_run, **kw)

    return go


def prior_draws(frame, shape, sigmas, key=0) -> np.ndarray:
    """The xbar sde_sampler starts from for PRNGKey(key), in float64."""
    k_init = jax.random.split(jax.random.PRNGKey(key))[0]
    return np.asarray(fr.prior(frame, k_init, shape, float(sigmas[0])), np.float64)


@pytest.mark.parametrize("name", list(SDES))
def test_pc_sampler_reproduces_gaussian_data(name):
    """100 predictor steps with one corrector step each, then D: 201 evaluations."""
    sde, mu, s = SDES[name], 0.5, 0.6
    score_fn = counted(gaussian_score(sde, mu, s), evals=True)
    frame, sigmas = sde_grid(sde, 101)
    sampler = sde_sampler(predictor_corrector, frame, score_fn, (2000, 2), sigmas, n_corrector=1)
    a, b = run_twice(sampler, score_fn)
    jax.effects_barrier()
    assert score_fn.evals == 3 * 201
    x = np.concatenate([a, b]).ravel()
    # 8000 values: standard errors 0.007 (mean) and 0.005 (std); 0.03 covers 100 EM steps.
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - s) < 0.03, (x.mean(), x.std())


@pytest.mark.parametrize("name", list(SDES))
def test_ode_sampler_follows_the_gaussian_flow_map(name):
    """25 RK4 steps from sigma_0 to sigma(eps), then D: 101 evaluations. The exact map of the
    prior draw xbar_0 is mu + K (xbar_0 - mu), K = s^2 / sqrt((s^2 + sigma_last^2)(s^2 +
    sigma_0^2)), the flow's ratio of marginal stds times D's shrinkage. Largest error
    measured: 1e-5 (VE), 6e-4 (sub-VP), 3.9e-3 (VP, whose grid uniform in t takes the longest
    steps in log sigma; 6e-4 at 50 steps)."""
    sde, mu, s = SDES[name], 0.5, 0.6
    score_fn = counted(gaussian_score(sde, mu, s), evals=True)
    frame, sigmas = sde_grid(sde, 26)
    sampler = sde_sampler(probability_flow_rk4, frame, score_fn, (2000, 2), sigmas)
    a, b = run_twice(sampler, score_fn)
    jax.effects_barrier()
    assert score_fn.evals == 3 * 101
    sig = np.asarray(sigmas, np.float64)
    gain = s**2 / np.sqrt((s**2 + sig[-2] ** 2) * (s**2 + sig[0] ** 2))
    expected = mu + gain * (prior_draws(frame, (2000, 2), sigmas) - mu)
    np.testing.assert_allclose(a, expected, atol=5e-3)
    x = np.concatenate([a, b]).ravel()
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - s) < 0.03, (x.mean(), x.std())


@pytest.mark.parametrize("name", list(SDES))
def test_final_denoising_step_is_the_gaussian_posterior_mean(name):
    """Stopping the ODE at sigma(eps) = 0.3 (a grid without the final 0), xbar has mean mu and
    variance v = s^2 + sigma^2 (data plus noise); the grid's last step onto 0 maps it to
    E[x0 | xbar] = mu + s^2 / v (xbar - mu), mean mu and variance s^4 / v: the data's minus
    the posterior variance, as far below s^2 (to first order in sigma^2) as xbar is above it."""
    sde, mu, s = SDES[name], 0.5, 0.6
    score_fn = counted(gaussian_score(sde, mu, s), evals=True)
    eps = float(sde.edm_time(jnp.float32(0.3)))
    shape = (4000, 1)
    out = {}
    for zero in (False, True):
        frame, sigmas = sde_grid(sde, 26, eps, zero)
        go = jax.jit(sde_sampler(probability_flow_rk4, frame, score_fn, shape, sigmas))
        score_fn.evals = 0
        out[zero] = np.asarray(go(jax.random.PRNGKey(0)), np.float64)
        jax.effects_barrier()
        assert score_fn.evals == 100 + zero
    sigma = float(sigmas[-2])
    assert abs(sigma - 0.3) < 1e-4, sigma
    noisy, clean, v = out[False], out[True], s**2 + sigma**2
    np.testing.assert_allclose(clean, mu + s**2 / v * (noisy - mu), atol=1e-4)
    # 4000 draws: standard errors 0.01 (mean) and 0.007 (std); the flow is exact to 4e-3.
    assert abs(noisy.mean() - mu) < 0.03 and abs(noisy.std() - np.sqrt(v)) < 0.02
    assert abs(clean.mean() - mu) < 0.03 and abs(clean.std() - s**2 / np.sqrt(v)) < 0.02
    assert noisy.std() - s > 0.03 and s - clean.std() > 0.03


@pytest.mark.parametrize("c", [0, 1])
def test_pc_and_em_end_on_the_posterior_mean_of_their_last_state(c):
    """The same draws on a grid of 20 steps down to sigma(eps) = 0.3, without and with the last
    step onto 0: that step is D, noise-free and without a corrector (one evaluation)."""
    sde, mu, s = SDES["vp"], 0.5, 0.6
    score_fn = counted(gaussian_score(sde, mu, s), evals=True)
    eps = float(sde.edm_time(jnp.float32(0.3)))
    out = {}
    for zero in (False, True):
        frame, sigmas = sde_grid(sde, 21, eps, zero)
        go = sde_sampler(predictor_corrector, frame, score_fn, (500, 1), sigmas, n_corrector=c)
        score_fn.evals = 0
        out[zero] = np.asarray(jax.jit(go)(jax.random.PRNGKey(1)), np.float64)
        jax.effects_barrier()
        assert score_fn.evals == 20 * (1 + c) + zero
    v = s**2 + float(sigmas[-2]) ** 2
    np.testing.assert_allclose(out[True], mu + s**2 / v * (out[False] - mu), atol=1e-4)


def test_score_samplers_keep_the_known_region():
    """Inpainting with independent coordinates: the known pixels come out exact; annealed
    Langevin (steps independent of x) and the flow leave the rest as without them."""
    sde, mu, s = SDES["vp"], 0.5, 0.6
    frame, sigmas = sde_grid(sde, 9)
    score = fr.score_of(frame.denoiser(gaussian_score(sde, mu, s)))
    shape = (8, 6)
    x0 = jax.random.uniform(jax.random.PRNGKey(5), shape, minval=-1, maxval=1)
    mask = jnp.zeros(shape).at[:, :2].set(1.0)
    xbar = fr.prior(frame, jax.random.PRNGKey(6), shape, float(sigmas[0]))
    key = jax.random.PRNGKey(7)
    runs = {
        "als": lambda known: annealed_langevin(score, key, xbar, sigmas[:-1], 3, 0.2, known),
        "ode": lambda known: probability_flow_rk4(score, xbar, sigmas, key, known),
        "pc": lambda known: predictor_corrector(score, xbar, sigmas, key, known),
    }
    for name, run in runs.items():
        free, kept = np.asarray(run(None)), np.asarray(run((x0, mask)))
        np.testing.assert_allclose(kept[:, :2], x0[:, :2], atol=1e-6, err_msg=name)
        assert np.abs(kept[:, 2:] - x0[:, 2:]).mean() > 0.1, name
        if name != "pc":  # pc's corrector steps by norms over every pixel
            np.testing.assert_allclose(kept[:, 2:], free[:, 2:], atol=1e-5, err_msg=name)


def test_the_integrators_hold_the_function_once_per_loop():
    """An ODE of a network compiles the network once per loop, not once per stage: RK4 traces
    f once, Dormand-Prince twice (its first slope, then the loop over the other six stages)."""
    calls = []

    def f(y, t):
        calls.append(t)
        return -y

    jax.make_jaxpr(lambda y: odeint_fixed(f, y, 0.0, 1.0, 3))(jnp.ones((2, 3)))
    assert len(calls) == 1
    calls.clear()
    jax.make_jaxpr(lambda y: odeint_adaptive(f, y, 0.0, 1.0)[0])(jnp.ones((2, 3)))
    assert len(calls) == 2


def test_rk4_is_fourth_order_and_runs_both_ways():
    # dy/dt = -2 t y on a pytree, exact y(1) = y(0) exp(-1); halving h divides the error by 2^4.
    f = lambda y, t: jax.tree_util.tree_map(lambda v: -2.0 * t * v, y)
    y0 = {"a": jnp.float32(1.0), "b": jnp.ones(2)}
    errs = [abs(float(odeint_fixed(f, y0, 0.0, 1.0, n)["a"]) - np.exp(-1)) for n in (4, 8)]
    order = np.log2(errs[0] / errs[1])
    assert order == pytest.approx(4.0, abs=0.5), errs
    back = odeint_fixed(f, odeint_fixed(f, y0, 0.0, 1.0, 50), 1.0, 0.0, 50)
    np.testing.assert_allclose(back["b"], 1.0, atol=1e-3)
