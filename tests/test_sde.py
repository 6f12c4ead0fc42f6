"""VE, VP and sub-VP SDEs against their definitions (Song et al. 2021) and simulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def paper_coefs(name):
    """Drift coefficient f(t) and g(t)^2 as written in Song et al. (2021), float64."""
    if name == "ve":
        r = np.log(50.0 / 0.01)
        return (lambda t: 0.0), (lambda t: (0.01 * (50.0 / 0.01) ** t) ** 2 * 2 * r)
    beta = lambda t: 0.1 + t * 19.9
    if name == "vp":
        return (lambda t: -0.5 * beta(t)), beta
    int_beta = lambda t: 0.1 * t + 0.5 * 19.9 * t**2
    return (lambda t: -0.5 * beta(t)), (lambda t: beta(t) * (1 - np.exp(-2 * int_beta(t))))


@pytest.mark.parametrize("name", list(SDES))
def test_coefficients_follow_the_paper(name):
    sde, (f, g2) = SDES[name], paper_coefs(name)
    t = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    tj = jnp.asarray(t, jnp.float32)
    np.testing.assert_allclose(sde.drift_coef(tj), [f(s) for s in t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.square(sde.diffusion(tj)), g2(t), rtol=1e-5, atol=1e-6)
    assert sde.T == 1.0


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_matches_quadrature_of_the_linear_sde(name):
    # x(t) = a(t) x0 + noise, a(t) = exp(int_0^t f), Var(t) = int_0^t (a(t)/a(s))^2 g(s)^2 ds.
    sde, (f, g2) = SDES[name], paper_coefs(name)
    log_a = lambda t: integrate.quad(f, 0.0, t)[0]
    for t in (0.05, 0.3, 0.7, 1.0):
        var = integrate.quad(lambda s, t=t: np.exp(2 * (log_a(t) - log_a(s))) * g2(s), 0, t)[0]
        alpha, std = sde.mean_coef_std(jnp.float32(t))
        assert float(alpha) == pytest.approx(np.exp(log_a(t)), rel=1e-5)
        assert float(std) == pytest.approx(np.sqrt(var), rel=1e-4)
    x0 = jnp.ones((2, 3, 2))
    mean, std = sde.marginal(x0, jnp.array([0.2, 0.8]))
    assert mean.shape == x0.shape and std.shape == (2, 1, 1)


def test_closed_forms_named_in_the_paper():
    t = np.array([0.1, 0.5, 1.0])
    tj = jnp.asarray(t, jnp.float32)
    int_beta = 0.1 * t + 0.5 * 19.9 * t**2
    a_vp, s_vp = SDES["vp"].mean_coef_std(tj)
    np.testing.assert_allclose(a_vp, np.exp(-0.5 * int_beta), rtol=1e-5)
    np.testing.assert_allclose(s_vp, np.sqrt(1 - np.exp(-int_beta)), rtol=1e-5)
    _, s_sub = SDES["subvp"].mean_coef_std(tj)
    np.testing.assert_allclose(s_sub, 1 - np.exp(-int_beta), rtol=1e-5)
    _, s_ve = SDES["ve"].mean_coef_std(tj)
    np.testing.assert_allclose(s_ve, np.sqrt((0.01 * 5000.0**t) ** 2 - 0.01**2), rtol=1e-5)


@pytest.mark.parametrize("name", list(SDES))
def test_euler_maruyama_simulation_from_a_point_mass_matches_the_marginal(name):
    sde, n_paths, n_steps, x0 = SDES[name], 4000, 1000, 1.5
    dt = 1.0 / n_steps

    @jax.jit
    def simulate(key):
        def step(x, i):
            t = jnp.full((n_paths,), i * dt)
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape)
            x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * jnp.sqrt(dt) * noise
            return x, x

        _, path = jax.lax.scan(step, jnp.full((n_paths, 2), x0), jnp.arange(n_steps))
        return path[n_steps // 2 - 1], path[-1]

    for t, x in zip((0.5, 1.0), simulate(jax.random.PRNGKey(0)), strict=True):
        x = np.asarray(x, np.float64).ravel()  # the two coordinates are independent paths
        alpha, std = (float(v) for v in sde.mean_coef_std(jnp.float32(t)))
        # 4 standard errors of the Monte Carlo mean and std, plus 2% for the time step.
        se = std / np.sqrt(x.size)
        assert abs(x.mean() - alpha * x0) < 4 * se + 0.02 * abs(alpha * x0), (t, x.mean())
        assert x.std() == pytest.approx(std, rel=4 / np.sqrt(2 * x.size) + 0.02), t


@pytest.mark.parametrize("name", list(SDES))
def test_prior_sample_and_logp(name):
    sde = SDES[name]
    z = sde.prior_sample(jax.random.PRNGKey(0), (5000, 2, 2))
    assert float(jnp.std(z)) == pytest.approx(sde.prior_std, rel=0.03)
    zz = np.asarray(z[:7], np.float64)
    ref = stats.norm.logpdf(zz, scale=sde.prior_std).reshape(7, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z[:7]), ref, rtol=1e-5)


@pytest.mark.parametrize("name", list(SDES))
def test_reverse_and_ode_drifts(name):
    sde = SDES[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    t = jnp.array([0.01, 0.3, 0.6, 1.0])
    score_fn = lambda x, t: jnp.sin(x) * t[:, None]
    f = np.asarray(sde.drift_coef(t))[:, None] * np.asarray(x)
    g2 = np.square(np.asarray(sde.diffusion(t)))[:, None]
    s = np.sin(np.asarray(x)) * np.asarray(t)[:, None]
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(sde.reverse_drift(score_fn, x, t), f - g2 * s, **tol)
    np.testing.assert_allclose(sde.ode_drift(score_fn, x, t), f - 0.5 * g2 * s, **tol)


def test_sdes_are_hashable_static_configs():
    assert hash(VPSDE()) == hash(VPSDE()) and VPSDE() != SubVPSDE()
    with pytest.raises(AttributeError):
        VPSDE().beta_max = 1.0  # frozen


@pytest.mark.parametrize("sde", [*SDES.values(), VPSDE(2.0, 2.0), SubVPSDE(0.5, 0.5)])
def test_edm_time_inverts_edm_sigma(sde):
    # Constant beta (beta_min = beta_max) takes the formula's other branch: t = log1p(s^2) / b.
    t = jnp.array([1e-3, 0.05, 0.3, 0.7, 1.0])
    alpha, std = sde.mean_coef_std(t)
    sigma = sde.edm_sigma(t)
    np.testing.assert_allclose(sigma, std / alpha, rtol=1e-6)
    np.testing.assert_allclose(sde.edm_time(sigma), t, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(SDES))
def test_denoise_is_the_posterior_mean_of_gaussian_data(name):
    # Data N(mu, s^2): x_t = a x0 + std z is jointly Gaussian with x0, so E[x0 | x_t] is linear.
    sde, mu, s = SDES[name], 0.4, 0.7
    t = jnp.array([0.02, 0.3, 0.8])
    a, std = (v[:, None] for v in sde.mean_coef_std(t))
    score_fn = lambda x, t: -(x - a * mu) / (a**2 * s**2 + std**2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    want = mu + a * s**2 / (a**2 * s**2 + std**2) * (x - a * mu)
    np.testing.assert_allclose(sde.denoise(score_fn, x, t), want, rtol=1e-5, atol=1e-5)
