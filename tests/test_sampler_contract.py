"""One suite over every objective x every sampler of the registry: the network evaluations
counted while sampling equal nfe(), steps_for inverts nfe, a key gives the same samples again,
inpainting keeps the known pixels exactly, and on the exact model of Gaussian data N(MU, S^2)
(written in each objective's own terms, so the objective's frame is part of what is checked)
the deterministic samplers converge to the exact probability-flow map at their order and the
stochastic ones to the data's moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.build import frames, objectives
from jldm.build import samplers as registry
from jldm.build.noise import build_schedule, build_sde
from jldm.configs.default import get_config
from jldm.diffusion import frame as fr

MU, S = 0.3, 0.6
OBJECTIVES = ("ddpm", "ncsn", "vesde", "vpsde", "edm", "flow")
SAMPLERS = tuple(registry.REGISTRY)
# Deterministic samplers and the order their error is checked at. From 8 to 32 steps the
# measured max errors fall 4.0-4.1x (ddim, euler), 16-29x (heun), 4.5-9x (dpmpp2m: second order
# only asymptotically; its 8-point log-SNR grid from sigma 80 takes steps of 1.35 in log sigma)
# and 16-400x (ode: RK4, checked at 2 as the grid's first steps are long).
ORDER = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp2m": 1, "ode": 2}


def config_of(objective: str):
    c = get_config()
    c.diffusion.objective = objective
    if objective == "edm":
        c.diffusion.sigma_min, c.diffusion.sigma_max = 0.002, 80.0
    c.sample.steps_per_sigma = 2
    return c


def _b(v, x):
    return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def exact_model(config):
    """fn(x, c) of Gaussian data N(MU, S^2) in the objective's own terms."""
    f = config.diffusion
    if f.objective == "ddpm":
        abar_all = build_schedule(config).alphas_cumprod

        def eps(x, t):
            abar = _b(abar_all[t], x)
            return (x - jnp.sqrt(abar) * MU) * jnp.sqrt(1 - abar) / (abar * S**2 + 1 - abar)

        return eps
    if f.objective == "ncsn":
        return lambda x, sigma: -(x - MU) / (S**2 + _b(sigma, x) ** 2)
    if f.objective in ("vesde", "vpsde"):
        sde = build_sde(config)

        def score(x, t):
            a, std = (_b(v, x) for v in sde.mean_coef_std(t))
            return -(x - a * MU) / (a**2 * S**2 + std**2)

        return score
    denoise = lambda xbar, sigma: (S**2 * xbar + sigma**2 * MU) / (S**2 + sigma**2)
    if f.objective == "edm":
        return lambda x, sigma: denoise(x, _b(sigma, x))
    # flow: x = (1 - t) xbar, sigma = t / (1 - t), v = (x - D) / t
    return lambda x, t: (x - denoise(x / (1 - _b(t, x)), _b(t / (1 - t), x))) / _b(t, x)


def counting(fn, counter):
    def wrapped(x, c):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return fn(x, c)

    return wrapped


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_sampler_counts_its_evaluations_repeats_its_key_and_inpaints(objective):
    config = config_of(objective)
    assert registry.samplers_of(objectives.get(config)) == SAMPLERS
    shape = (4, 3, 3, 1)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1, maxval=1)
    mask = jnp.zeros(shape).at[:, :, :2].set(1.0)
    for name in SAMPLERS:
        sampler, counter = registry.get(name), [0]
        steps = 200 if name == "ode_adaptive" else 5  # attempts enough to reach the end
        sample = sampler.build(registry.Plan(config, shape, steps, eta=0.5, clip=False))
        known = (x0, mask) if sampler.inpaints else None
        fn = counting(exact_model(config), counter)
        go = jax.jit(lambda k, s=sample, kn=known, fn=fn: s(fn, k, kn))
        a = go(jax.random.PRNGKey(0))
        jax.effects_barrier()
        if name == "ode_adaptive":  # nfe() bounds what the model's smoothness asks for
            assert 2 <= counter[0] <= sampler.nfe(config, steps), (name, counter[0])
        else:
            assert counter[0] == sampler.nfe(config, steps), (name, counter[0])
        assert sampler.steps_for(config, sampler.nfe(config, steps)) == steps, name
        np.testing.assert_array_equal(go(jax.random.PRNGKey(0)), a, err_msg=name)
        if name in ORDER or name == "ode_adaptive":  # no noise: only the start changes
            assert np.abs(go(jax.random.PRNGKey(7)) - a).max() > 1e-3, name
        if known is not None:
            np.testing.assert_allclose(a[:, :, :2], x0[:, :, :2], atol=1e-5, err_msg=name)


def flow_map_error(name: str, config, steps: int, n: int = 256) -> float:
    """Max |sample - exact flow map of its starting point| over n one-pixel samples."""
    sampler = registry.get(name)
    frame = frames.frame_of(config, clip=False)
    first = float(sampler.sigmas(config, frame, steps)[0])
    key = jax.random.PRNGKey(3)
    x = sampler.build(registry.Plan(config, (n, 1), steps, clip=False))(exact_model(config), key)
    xbar0 = fr.prior(frame, jax.random.split(key)[0], (n, 1), first)
    exact = MU + S / np.sqrt(S**2 + first**2) * (np.asarray(xbar0, np.float64) - MU)
    return float(np.abs(np.asarray(x, np.float64) - exact).max())


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_deterministic_samplers_converge_to_the_flow_map_at_their_order(objective):
    config = config_of(objective)
    for name, order in ORDER.items():
        coarse, fine = flow_map_error(name, config, 8), flow_map_error(name, config, 32)
        # Four times the steps: the error falls by 4^order (half of that allowed), or reaches
        # float32's floor for starting points up to 3 x 80 (measured: ode on ncsn at 2.5e-4).
        assert fine < max(2.0 * coarse / 4**order, 5e-4), (name, coarse, fine)
        assert fine < 0.2, (name, fine)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_adaptive_ode_meets_its_tolerance_on_the_flow_map(objective):
    """Dormand-Prince from sigma 80 with up to 500 attempts: a tighter tolerance lands closer
    to the exact map, and spends more evaluations; too few attempts give NaN, not a sample
    short of the end."""
    config = config_of(objective)
    errors = []
    for tol in (1e-2, 1e-5):
        config.sample.ode_tol = tol
        errors.append(flow_map_error("ode_adaptive", config, 500))
    assert errors[1] < errors[0] and errors[1] < 2e-3, errors
    sample = registry.get("ode_adaptive").build(registry.Plan(config, (8, 1), 2, clip=False))
    assert np.isnan(np.asarray(sample(exact_model(config), jax.random.PRNGKey(0)))).all()


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_stochastic_samplers_reach_the_data_moments(objective):
    """4000 draws: standard errors 0.009 (mean) and 0.007 (std); the tolerances add each
    sampler's discretisation bias at these step counts (Langevin steps of als bias the
    variance upwards)."""
    config = config_of(objective)
    config.sample.steps_per_sigma = 20
    for name, steps, tol in (("ddpm", 100, 0.04), ("pc", 100, 0.05), ("em", 200, 0.05),
                             ("als", 20, 0.1)):  # fmt: skip
        sample = registry.get(name).build(registry.Plan(config, (4000, 1), steps, clip=False))
        x = np.asarray(
            jax.jit(lambda k, s=sample: s(exact_model(config), k))(jax.random.PRNGKey(5))
        )
        assert abs(x.mean() - MU) < tol and abs(x.std() - S) < tol, (name, x.mean(), x.std())
