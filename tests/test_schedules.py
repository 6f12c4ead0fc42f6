"""Schedules and q(x_t | x_0) against float64 closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.diffusion.schedules import (
    make_schedule,
    predict_x0_eps,
    q_mean_std,
    q_sample,
    target,
)


def test_linear_alpha_bar_is_product_of_one_minus_beta():
    s = make_schedule("linear", 1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)


def test_cosine_alpha_bar_follows_cos_squared():
    T, s_off = 1000, 0.008
    s = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    expected = np.array([f(t + 1) / f(0) for t in range(T)])
    # Away from the clipped final betas the product telescopes to f(t)/f(0).
    np.testing.assert_allclose(s.alphas_cumprod[:900], expected[:900], rtol=1e-4)
    assert float(s.betas.max()) <= 0.999 + 1e-6


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 10)


def reference_betas(kind: str, T: int = 100) -> np.ndarray:
    """float64 betas straight from the definitions."""
    if kind == "linear":
        return np.linspace(1e-4, 0.02, T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_moments_match_closed_form(kind):
    s = make_schedule(kind, 100)
    x0 = jnp.full((20000, 1), 0.7)
    for t in (0, 10, 50, 99):
        tt = jnp.full((x0.shape[0],), t)
        noise = jax.random.normal(jax.random.PRNGKey(t), x0.shape)
        xt = np.asarray(q_sample(s, x0, tt, noise), np.float64)
        abar = float(np.cumprod(1 - reference_betas(kind))[t])
        mean, std = q_mean_std(s, x0, tt)
        np.testing.assert_allclose(mean[0, 0], math.sqrt(abar) * 0.7, rtol=1e-5)
        np.testing.assert_allclose(std[0, 0], math.sqrt(1 - abar), rtol=2e-4)
        # Sample moments within 4 standard errors of the closed form.
        assert abs(xt.mean() - math.sqrt(abar) * 0.7) < 4 * math.sqrt(1 - abar) / math.sqrt(2e4)
        assert abs(xt.var() / (1 - abar) - 1) < 4 * math.sqrt(2 / 2e4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_convert_back_to_x0_and_eps(prediction):
    s = make_schedule("linear", 1000)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k1, (8, 4, 4, 1))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 1, 10, 100, 500, 900, 998, 999])
    xt = q_sample(s, x0, t, eps)
    x0_hat, eps_hat = predict_x0_eps(s, xt, t, target(s, x0, t, eps, prediction), prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3 if prediction == "eps" else 1e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-3 if prediction == "x0" else 1e-4)


def test_v_target_formula():
    s = make_schedule("cosine", 50)
    x0, eps, t = jnp.ones((1, 2)) * 0.3, jnp.ones((1, 2)) * -1.2, jnp.array([20])
    a = math.sqrt(float(s.alphas_cumprod[20]))
    expected = a * -1.2 - math.sqrt(1 - a * a) * 0.3
    np.testing.assert_allclose(target(s, x0, t, eps, "v"), expected, rtol=1e-5)
