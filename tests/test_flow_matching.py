"""Flow matching on Gaussian data x0 ~ N(MU, S^2 I), where the marginal velocity is known in
closed form: with V(t) = (1 - t)^2 S^2 + t^2,
v(x, t) = (t - (1 - t) S^2) / V(t) (x - (1 - t) MU) - MU, and the exact flow from the prior
x(1) = z ~ N(0, I) is x(t) = (1 - t) MU + sqrt(V(t)) z, so x(0) = MU + S z."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from jldm.build import frames, objectives
from jldm.build import samplers as registry
from jldm.build.objectives import build_loss
from jldm.build.ranges import check_config
from jldm.configs import digits_flow
from jldm.diffusion import flow_matching
from jldm.diffusion import frame as fr
from jldm.diffusion.guidance import classifier_free_guidance
from jldm.diffusion.odeint import odeint_fixed
from jldm.diffusion.score_losses import exact_trace
from jldm.errors import UserError
from tests.objective_checks import check_labels_drop, check_tiny_unet_step
from tests.tiny import tiny_config

MU, S = 0.3, 0.6


def _config(**over):
    base = {"diffusion.objective": "flow", "sample.sampler": "euler", "diffusion.cond_drop": 0.0}
    return tiny_config("/unused", **{**base, **over})


def exact_v(x, t, mu=MU):
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - t) ** 2 * S**2 + t**2
    return (t - (1 - t) * S**2) / var * (x - (1 - t) * mu) - mu


class _ExactUNet:
    """The UNet as the exact velocity, time read back from its input 999 t; class y's data has
    mean mus[y] (guidance)."""

    def __init__(self, mus=None):
        self.mus = mus

    def apply(self, variables, x, t_in, labels, train=False, rngs=None):
        mu = MU if self.mus is None else self.mus[labels].reshape(-1, *([1] * (x.ndim - 1)))
        return exact_v(x, t_in / 999.0, mu)


def _exact_fn(mus=None, config=None):
    net = objectives.make_net(config or _config(), _ExactUNet(mus))
    return lambda x, t: net(None, x, t, jnp.zeros((x.shape[0],), jnp.int32))


def _sample(name, steps, fn, shape, key, known=None, **over):
    config = _config(**over)
    go = registry.get(name).build(registry.Plan(config, shape, steps, clip=False))
    return np.asarray(jax.jit(lambda k: go(fn, k, known))(key), np.float64)


def _flow_map(x0_bar, last: float) -> np.ndarray:
    """The exact flow in the EDM frame from the prior draw at sigma = 80 down to last, then D:
    MU + K (xbar0 - MU), K = S^2 / sqrt((S^2 + last^2)(S^2 + 80^2))."""
    gain = S**2 / np.sqrt((S**2 + last**2) * (S**2 + 80.0**2))
    return MU + gain * (x0_bar - MU)


def _prior_draws(key, shape) -> np.ndarray:
    """The xbar a registry sampler starts from for key: N(0, 80^2 + 1), float64."""
    frame = flow_matching.flow_frame(1e-3)
    return np.asarray(fr.prior(frame, jax.random.split(key)[0], shape, 80.0), np.float64)


def test_euler_and_heun_land_on_the_data_at_orders_one_and_two():
    """Against the exact map of the same prior draws (_flow_map; sample.sigma_start 80 is t =
    80/81): the largest error falls as steps^-1 (Euler, uniform in t) and steps^-2 (Heun,
    Karras' grid): slopes fitted over 16..64 steps, measured 1.01 and 2.15, within 0.2 of the
    order; at 64 Heun steps the samples' mean and std match MU and S within 4 standard errors
    of 4000 draws."""
    shape, key = (4000, 1), jax.random.PRNGKey(0)
    config, frame = _config(), flow_matching.flow_frame(1e-3)
    assert frames.frame_of(config).sigma_min == frame.sigma_min
    xbar0 = _prior_draws(key, shape)
    steps = np.array([16, 32, 64])
    for name, order in (("euler", 1.0), ("heun", 2.0)):
        err = []
        for n in steps:
            sigmas = registry.get(name).sigmas(config, frame, int(n))
            assert sigmas[0] == 80.0 and sigmas[-1] == 0.0, sigmas
            exact = _flow_map(xbar0, float(sigmas[-2]))
            err.append(np.abs(_sample(name, int(n), exact_v, shape, key) - exact).max())
        slope = -np.polyfit(np.log(steps), np.log(err), 1)[0]
        assert abs(slope - order) < 0.2, (name, slope, err)
    x = _sample("heun", 64, exact_v, shape, key)
    assert abs(x.mean() - MU) < 4 * S / np.sqrt(x.size), x.mean()
    assert abs(x.std() - S) < 4 * S / np.sqrt(2 * x.size), x.std()


def test_euler_on_the_native_grid_is_eulers_method_in_t():
    """The frame's Euler step on the flow's grid (uniform in t) is x <- x + (t' - t) v(x, t):
    the same numbers as Euler's method written out in t, from x = xbar0 / 81 at t = 80/81."""
    shape, key = (64, 1), jax.random.PRNGKey(9)
    config, frame = _config(), flow_matching.flow_frame(1e-3)
    sigmas = np.asarray(registry.get("euler").sigmas(config, frame, 10), np.float64)
    ts = sigmas / (1 + sigmas)
    np.testing.assert_allclose(np.diff(ts[:-1]), np.diff(ts[:-1]).mean(), rtol=1e-4)
    x = _prior_draws(key, shape) / 81.0
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x = x + (t_next - t) * np.asarray(exact_v(jnp.asarray(x), jnp.full((64,), t)), np.float64)
    np.testing.assert_allclose(_sample("euler", 10, exact_v, shape, key), x, atol=1e-4)


def test_dpmpp2m_through_the_flows_frame_follows_the_exact_flow():
    """DPM-Solver++ on the log-SNR grid follows the exact flow then D (_flow_map) at second
    order (24 -> 48 steps: error / 3.5-5)."""
    shape, key = (2000, 1), jax.random.PRNGKey(1)
    frame = flow_matching.flow_frame(1e-3)
    xbar0 = _prior_draws(key, shape)
    err = {}
    for n in (24, 48):
        x = _sample("dpmpp2m", n, _exact_fn(), shape, key)
        last = float(fr.log_snr_sigmas(frame, n, 80.0)[-2])
        err[n] = np.abs(x - _flow_map(xbar0, last)).max()
    assert 3.5 < err[24] / err[48] < 5.0 and err[48] < 0.02, err
    assert abs(x.mean() - MU) < 4 * S / np.sqrt(x.size) + 0.005, x.mean()


@pytest.mark.parametrize(
    "sampling, weighting",
    [("uniform", "default"), ("logit_normal", "default"), ("uniform", "min_snr")],
)
def test_loss_at_the_exact_velocity_matches_the_closed_form(sampling, weighting):
    """Per pixel the residual z - x0 - v(x_t, t) has variance c(t) = 1 + S^2 - (t - (1 - t)
    S^2)^2 / V(t); the loss averages f(t) c(t) over the training times (f = 1, or min-SNR's
    min((1 - t)^2, 5 t^2)), by quadrature; tolerance 4 standard errors of the batch."""
    config = _config(**{"diffusion.time_sampling": sampling, "diffusion.weighting": weighting})
    loss_fn = build_loss(config, _ExactUNet())
    n = 8192
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(2), (n, 2, 2, 1))
    batch = {"image": x0, "label": jnp.zeros((n,), jnp.int32)}
    loss, _ = jax.jit(lambda b: loss_fn(None, jax.random.PRNGKey(3), b))(batch)
    if sampling == "uniform":
        t = (np.arange(200000) + 0.5) / 200000
        w = np.full_like(t, 1 / t.size)
    else:
        nodes, w = np.polynomial.hermite_e.hermegauss(80)
        t, w = 1 / (1 + np.exp(-nodes)), w / w.sum()
    c = 1 + S**2 - (t - (1 - t) * S**2) ** 2 / ((1 - t) ** 2 * S**2 + t**2)
    if weighting == "min_snr":
        c = c * np.minimum((1 - t) ** 2, 5.0 * t**2)
    mean = np.sum(w * c)
    se = np.sqrt((np.sum(w * c**2) * (1 + 2 / 4) - mean**2) / n)
    assert abs(float(loss) - mean) < 4 * se, (float(loss), mean, se)


def test_logit_normal_times_follow_their_cdf():
    """Kolmogorov-Smirnov against Phi((logit t - m) / s), 1% level."""
    n = 20000
    t = np.sort(
        np.asarray(flow_matching.sample_time(jax.random.PRNGKey(4), n, "logit_normal", 0.5, 0.8))
    )
    cdf = ndtr((np.log(t / (1 - t)) - 0.5) / 0.8)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(n), ks


def _counting(fn, counter):
    def wrapped(x, t):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return fn(x, t)

    return wrapped


def test_samplers_count_their_evaluations_and_take_guidance_and_inpainting():
    """euler: N evaluations, heun: 2N - 1. Guidance w = 2 on class means 0.5 and -0.2 gives
    N(1.2, S^2); an inpainting keeps the known region exactly and leaves the rest to the flow
    (independent coordinates)."""
    config = _config()
    for name, want in (("euler", 6), ("heun", 11)):
        counter = [0]
        _sample(name, 6, _counting(exact_v, counter), (4, 1), jax.random.PRNGKey(0))
        jax.effects_barrier()
        assert counter[0] == registry.get(name).nfe(config, 6) == want, name
        assert registry.get(name).steps_for(config, want) == 6
    mus = jnp.array([0.5, -0.2])
    net = objectives.make_net(config, _ExactUNet(mus))
    n = 2000
    cond, null = jnp.zeros((n,), jnp.int32), jnp.ones((n,), jnp.int32)
    fn = classifier_free_guidance(lambda x, t, y: net(None, x, t, y), cond, null, 2.0)
    shape = (8, 4, 4, 1)
    x0 = jax.random.uniform(jax.random.PRNGKey(5), shape, minval=-1, maxval=1)
    mask = jnp.zeros(shape).at[:, :, :2].set(1.0)
    for name in ("euler", "heun", "dpmpp2m"):
        x = _sample(name, 32, fn, (n, 1), jax.random.PRNGKey(6))
        assert abs(x.mean() - 1.2) < 0.05 and abs(x.std() - S) < 0.05, (name, x.mean(), x.std())
        free = _sample(name, 8, _exact_fn(), shape, jax.random.PRNGKey(7))
        kept = _sample(name, 8, _exact_fn(), shape, jax.random.PRNGKey(7), (x0, mask))
        np.testing.assert_allclose(kept[:, :, :2], x0[:, :, :2], atol=1e-6)
        np.testing.assert_allclose(kept[:, :, 2:], free[:, :, 2:], atol=1e-5)


def test_probability_flow_gives_the_exact_log_density():
    """log p_0(x) = prior_logp(x(1)) + int_0^1 div v dt along dx/dt = v (exact trace, 64 RK4
    steps) equals log N(x; MU, S^2 I) for the exact velocity, in 2 dimensions."""
    ode = flow_matching.probability_flow(exact_v)
    x = MU + S * jax.random.normal(jax.random.PRNGKey(8), (16, 2))

    def f(state, t):
        y, _ = state
        drift, div = exact_trace(lambda z: ode.drift(z, jnp.full((z.shape[0],), t)), y)
        return drift, div

    z, delta = jax.jit(lambda x: odeint_fixed(f, (x, jnp.zeros(16)), ode.t0, ode.t1, 64))(x)
    logp = ode.prior_logp(z) + delta
    want = -math.log(2 * math.pi * S**2) - 0.5 * np.sum((np.asarray(x) - MU) ** 2, -1) / S**2
    np.testing.assert_allclose(logp, want, atol=1e-4)


def test_labels_become_the_null_class_with_probability_cond_drop():
    """As for the other objectives (tests/objective_checks.py)."""
    check_labels_drop(_config)


def test_a_train_step_on_the_tiny_unet_and_the_samplers():
    """As for EDM (tests/objective_checks.py), with logit-normal times."""
    over = {"diffusion.cond_drop": 0.1, "diffusion.time_sampling": "logit_normal"}
    check_tiny_unet_step(_config(**over), ("euler", "heun", "dpmpp2m"))


def test_digits_flow_config_and_bad_settings():
    config = digits_flow.get_config()
    check_config(config)
    assert objectives.get(config).name == "flow"
    with pytest.raises(UserError, match="time_sampling"):
        objectives.get(_config(**{"diffusion.time_sampling": "cosine"}))
    with pytest.raises(UserError, match="logit_std"):
        check_config(_config(**{"diffusion.logit_std": 0.0}))
    # Every sampler applies to the flow, heun's churn included (it renoises in the EDM frame).
    assert registry.samplers_of(objectives.get(_config())) == tuple(registry.REGISTRY)
    key = jax.random.PRNGKey(10)
    plain = _sample("heun", 16, exact_v, (2000, 1), key)
    churned = _sample("heun", 16, exact_v, (2000, 1), key, **{"sample.s_churn": 1.0})
    assert np.abs(churned - plain).max() > 0.01, np.abs(churned - plain).max()
    assert abs(churned.mean() - MU) < 0.05 and abs(churned.std() - S) < 0.05, churned.std()
