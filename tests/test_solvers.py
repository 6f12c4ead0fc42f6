"""DPM-Solver++ 2M and Heun (Karras et al.) on Gaussian data, where the denoiser and the
probability-flow map are known in closed form, for every process that has a flow: the discrete
schedule (eps, x0 and v prediction), VP, sub-VP and VE SDEs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.build import frames
from jldm.build import samplers as registry
from jldm.configs.default import get_config
from jldm.diffusion import frame as fr
from jldm.diffusion import solvers
from jldm.diffusion.guidance import classifier_free_guidance
from jldm.diffusion.schedules import make_schedule
from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE

MU, S = 0.3, 0.6
SCHED = make_schedule("cosine", 1000)
SDES = {"vpsde": VPSDE(), "subvpsde": SubVPSDE(), "vesde": VESDE(0.01, 50.0)}
SOLVERS = {"dpmpp2m": fr.log_snr_sigmas, "heun": fr.karras_sigmas}


def gaussian_eps(mu=MU, s=S, sched=SCHED):
    """The exact eps(x_t, t) of data N(mu, s^2 I)."""

    def fn(x, t):
        abar = sched.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - jnp.sqrt(abar) * mu) * jnp.sqrt(1 - abar) / (abar * s**2 + 1 - abar)

    return fn


def as_prediction(prediction: str, sched=SCHED):
    """The same exact model as an x0 or v output."""
    eps_fn = gaussian_eps(sched=sched)

    def fn(x, t):
        abar = sched.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        a, b, eps = jnp.sqrt(abar), jnp.sqrt(1 - abar), eps_fn(x, t)
        x0 = (x - b * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]

    return fn


def gaussian_score(sde, mu=MU, s=S):
    """The exact score of p_t for data N(mu, s^2 I): N(a mu, (a^2 s^2 + std^2) I)."""

    def fn(x, t):
        a, std = (v.reshape(-1, *([1] * (x.ndim - 1))) for v in sde.mean_coef_std(t))
        return -(x - a * mu) / (a**2 * s**2 + std**2)

    return fn


def process(name: str, prediction: str = "eps"):
    """(frame, exact model) of a process by objective name."""
    if name == "ddpm":
        return fr.discrete_frame(SCHED, prediction, False), as_prediction(prediction)
    return fr.sde_frame(SDES[name], 1e-3), gaussian_score(SDES[name])


def flow_then_denoise(xbar0, sigmas) -> np.ndarray:
    """The exact flow of N(MU, S^2) data from sigmas[0] to sigmas[-2], then D (the last step).

    xbar(sigma) - MU scales as sqrt(S^2 + sigma^2), and D(xbar, sigma) - MU = S^2 / (S^2 +
    sigma^2) (xbar - MU).
    """
    sig = np.asarray(sigmas, np.float64)
    gain = S**2 / np.sqrt((S**2 + sig[-2] ** 2) * (S**2 + sig[0] ** 2))
    return MU + (np.asarray(xbar0, np.float64) - MU) * gain


def solve(name, frame, fn, sigmas, xbar0, **kw):
    d = frame.denoiser(fn)
    if name == "dpmpp2m":
        return jax.jit(lambda x: solvers.dpmpp_2m(d, x, sigmas))(xbar0)
    return jax.jit(lambda x: solvers.heun(d, x, sigmas, **kw))(xbar0)


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("name", ["ddpm", *SDES])
def test_solver_follows_the_gaussian_flow_at_second_order(name, solver):
    """Against the exact flow from the same 4000 starting draws.

    Order: 24 -> 48 steps divides the largest error by 3.7-4.0 (DPM-Solver++) and 4.4
    (Heun); second order is 4. Distribution: the exact flow's samples are N(MU (1 - K),
    K^2 (sigma_0^2 + data_var)), K = S^2 / sqrt((S^2 + sigma_min^2)(S^2 + sigma_0^2)), i.e.
    N(MU, S^2) to 0.005, matched within 3 standard errors; the solver at 24 steps (Heun: 47
    evaluations) moves the samples' std by +0.005..+0.011 (DPM-Solver++) and +0.014..+0.020
    (Heun), its mean by under 0.001: bounds 0.015 and 0.025.
    """
    frame, fn = process(name)
    start = fr.start_sigma(frame, 80.0)
    xbar0 = fr.prior(frame, jax.random.PRNGKey(0), (2000, 2), start)
    err, moments = {}, {}
    for n in (24, 48):
        sigmas = SOLVERS[solver](frame, n, start)
        x = np.asarray(solve(solver, frame, fn, sigmas, xbar0), np.float64)
        exact = flow_then_denoise(xbar0, sigmas)
        err[n] = np.abs(x - exact).max()
        moments[n] = x.mean() - exact.mean(), x.std() - exact.std()
    assert 3.5 < err[24] / err[48] < 5.0, err
    assert err[24] < (0.05 if solver == "dpmpp2m" else 0.1), err
    bias = 0.015 if solver == "dpmpp2m" else 0.025
    assert abs(moments[24][0]) < 0.002 and 0 < moments[24][1] < bias, moments
    sig = np.asarray(sigmas, np.float64)
    gain = S**2 / np.sqrt((S**2 + sig[-2] ** 2) * (S**2 + sig[0] ** 2))
    mean, std = MU * (1 - gain), gain * np.sqrt(sig[0] ** 2 + frame.data_var)
    assert abs(mean - MU) < 5e-3 and abs(std - S) < 1e-3, (mean, std)
    n = exact.size
    assert abs(exact.mean() - mean) < 3 * S / np.sqrt(n), exact.mean()
    assert abs(exact.std() - std) < 3 * S / np.sqrt(2 * n), exact.std()


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_prediction_type_gives_the_same_dpm_samples(prediction):
    frame_eps, fn_eps = process("ddpm", "eps")
    frame, fn = process("ddpm", prediction)
    start = fr.start_sigma(frame, 80.0)
    sigmas = fr.log_snr_sigmas(frame, 10, start)
    xbar0 = fr.prior(frame, jax.random.PRNGKey(1), (256, 2), start)
    want = solve("dpmpp2m", frame_eps, fn_eps, sigmas, xbar0)
    np.testing.assert_allclose(solve("dpmpp2m", frame, fn, sigmas, xbar0), want, atol=2e-4)


def test_dpm_step_matches_the_papers_formula_in_float64():
    """Lu et al.'s update in (alpha, std) form, written out in numpy on an arbitrary denoiser:
    x_i = (std_i / std_{i-1}) x_{i-1} - alpha_i expm1(-h_i) ((1 + 1/(2 r_i)) D_{i-1} - D_{i-2}
    / (2 r_i)), h_i = lambda_i - lambda_{i-1}, r_i = h_{i-1} / h_i; first order at both ends."""
    sde = VPSDE()
    t = np.array([1.0, 0.6, 0.35, 0.2, 0.08, 0.02])
    alpha, std = (np.asarray(v, np.float64) for v in sde.mean_coef_std(jnp.asarray(t)))
    lam = np.log(alpha / std)
    d_of = lambda x, i: np.tanh(x) * (1 + i) / 3  # any denoiser will do: only the steps count
    xbar = np.linspace(-3, 3, 7)[:, None] * std[0] / alpha[0]
    x = alpha[0] * xbar
    prev, h_prev = None, None
    for i in range(len(t)):
        d = d_of(x / alpha[i], i)
        if i == len(t) - 1:
            x = d
            break
        h = lam[i + 1] - lam[i]
        dd = d if prev is None else (1 + h / (2 * h_prev)) * d - h / (2 * h_prev) * prev
        x = std[i + 1] / std[i] * x - alpha[i + 1] * np.expm1(-h) * dd
        prev, h_prev = d, h
    sigmas = np.append(std / alpha, 0.0)
    index = lambda sigma: jnp.argmin(jnp.abs(jnp.asarray(sigmas[:-1], jnp.float32) - sigma))
    got = solvers.dpmpp_2m(
        lambda xb, sigma: jnp.tanh(xb) * (1 + index(sigma)) / 3,
        jnp.asarray(xbar, jnp.float32),
        jnp.asarray(sigmas, jnp.float32),
    )
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)


def _config(objective: str, **sample):
    c = get_config()
    c.diffusion.objective = objective
    c.sample.update(sample)
    return c


def _counting(fn, counter):
    """fn that adds its batch of evaluations to counter[0] as it runs (not as it traces)."""

    def wrapped(x, c):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return fn(x, c)

    return wrapped


@pytest.mark.parametrize("objective", ["ddpm", "vpsde"])
def test_registry_samplers_run_the_solvers_and_count_their_evaluations(objective):
    config = _config(objective)
    frame, fn = process(objective)
    key = jax.random.PRNGKey(3)
    start = fr.start_sigma(frame, 80.0)
    xbar0 = fr.prior(frame, jax.random.split(key)[0], (64, 2), start)
    for name, steps in (("dpmpp2m", 6), ("heun", 5)):
        sampler = registry.get(name)
        counter = [0]
        sample = sampler.build(registry.Plan(config, (64, 2), steps, clip=False))
        counted = _counting(fn, counter)
        x = jax.jit(lambda k, sample=sample, f=counted: sample(f, k))(key)
        jax.effects_barrier()
        assert counter[0] == sampler.nfe(config, steps) == (6 if name == "dpmpp2m" else 9)
        want = solve(name, frame, fn, SOLVERS[name](frame, steps, start), xbar0)
        np.testing.assert_allclose(x, want, atol=1e-5)
        assert sampler.steps_for(config, sampler.nfe(config, steps)) == steps


def test_guidance_reaches_the_solvers_through_the_model():
    """Scores of N(mu_c, S^2) and N(mu_u, S^2) combined by guidance w are the score of
    N(mu_u + w (mu_c - mu_u), S^2): the guided samples have that mean."""
    sde = SDES["vpsde"]
    apply_fn = lambda x, t, mu: gaussian_score(sde, mu[:, None], S)(x, t)
    cond, null = jnp.full((2000,), 0.5), jnp.full((2000,), -0.2)
    plan = registry.Plan(_config("vpsde"), (2000, 1), 20)
    fn = classifier_free_guidance(apply_fn, cond, null, 2.0)
    for name in SOLVERS:
        sample = registry.get(name).build(plan)
        x = np.asarray(jax.jit(lambda k, sample=sample: sample(fn, k))(jax.random.PRNGKey(4)))
        assert abs(x.mean() - 1.2) < 0.04 and abs(x.std() - S) < 0.04, (name, x.mean(), x.std())


@pytest.mark.parametrize("objective, name", [("ddpm", "dpmpp2m"), ("vesde", "heun")])
def test_inpainting_keeps_the_known_region_and_leaves_the_rest_to_the_flow(objective, name):
    """Independent coordinates: the unknown ones follow the plain flow; the known are exact."""
    fn = process(objective)[1]
    shape = (8, 4, 4, 1)
    x0 = jax.random.uniform(jax.random.PRNGKey(5), shape, minval=-1, maxval=1)
    mask = jnp.zeros(shape).at[:, :, :2].set(1.0)
    key = jax.random.PRNGKey(6)
    sample = registry.get(name).build(registry.Plan(_config(objective), shape, 8, clip=False))
    free = sample(fn, key)
    kept = sample(fn, key, (x0, mask))
    np.testing.assert_allclose(kept[:, :, :2], x0[:, :, :2], atol=1e-6)
    np.testing.assert_allclose(kept[:, :, 2:], free[:, :, 2:], atol=1e-5)
    assert np.abs(kept[:, :, 2:] - x0[:, :, 2:]).mean() > 0.1


def _heun_draws(key, **churn):
    """4000 draws of heun at 24 steps on the exact VP-SDE score, sample.* settings churn."""
    fn = gaussian_score(SDES["vpsde"])
    sample = registry.get("heun").build(registry.Plan(_config("vpsde", **churn), (4000, 1), 24))
    return np.asarray(jax.jit(lambda k: sample(fn, k))(key), np.float64)


def test_heun_churn_renoises_inside_its_window_and_keeps_the_gaussian():
    """Churn (s_churn 2 on sigma in [0.05, 10]) changes the samples; they keep the data's mean
    and std within 0.04: 3 standard errors of 4000 draws (0.02) plus Heun's bias at 24 steps
    (measured on 20000 draws: std +0.020 with this churn, +0.013 without)."""
    key = jax.random.PRNGKey(7)
    plain = _heun_draws(key)
    churned = _heun_draws(key, s_churn=2.0, s_tmin=0.05, s_tmax=10.0)
    assert np.abs(churned - plain).max() > 0.05
    assert abs(churned.mean() - MU) < 0.04 and abs(churned.std() - S) < 0.04, churned.std()


def test_heun_churn_window_without_a_grid_sigma_is_the_deterministic_sampler():
    """gamma = 0 at every step (s_tmin above the grid's 80): no noise, the plain ODE solver."""
    key = jax.random.PRNGKey(7)
    np.testing.assert_allclose(
        _heun_draws(key, s_churn=2.0, s_tmin=100.0), _heun_draws(key), atol=1e-6
    )


# Evaluations per sample of `steps` (corrector_steps 1, steps_per_sigma 5): ddim, euler, ddpm,
# dpmpp2m one per grid point; heun two but on the last; pc, em, ode `steps` steps then D; als
# steps_per_sigma at each of `steps` levels then D.
NFE = dict(ddim=3, euler=3, ddpm=3, heun=5, dpmpp2m=3, pc=7, em=4, ode=13, als=16)


@pytest.mark.parametrize("objective", ["ddpm", "vpsde"])
def test_every_sampler_counts_its_evaluations_and_its_grid_ends_at_zero(objective):
    """3 steps of each registered sampler (langevin apart): the network runs as often as its
    nfe says, steps_for inverts nfe, the grid has the sampler's points from the start sigma
    (80 on the frame, or a discrete model's level nearest it) down to 0, and the samples are
    finite."""
    config = _config(objective)
    frame, fn = process(objective)
    start = fr.start_sigma(frame, 80.0)
    assert frames.start(config, frame) == start
    for name, want in NFE.items():
        sampler, counter = registry.get(name), [0]
        sigmas = sampler.sigmas(config, frame, 3)
        assert len(sigmas) == sampler.points(3) + 1 and sigmas[-1] == 0, name
        assert np.isclose(sigmas[0], start, rtol=1e-6) and np.all(np.diff(sigmas) < 0), name
        sample = sampler.build(registry.Plan(config, (4, 1), 3, clip=False))
        counted = _counting(fn, counter)
        x = jax.jit(lambda k, sample=sample, f=counted: sample(f, k))(jax.random.PRNGKey(0))
        jax.effects_barrier()
        assert counter[0] == sampler.nfe(config, 3) == want, (name, counter[0])
        assert sampler.steps_for(config, want) == 3, name
        assert np.isfinite(np.asarray(x)).all(), name
