"""DDPM's variational bound on 8-bit data against float64 references: the exact posterior-mean
predictor of Gaussian data makes every term's expectation a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jldm.diffusion.schedules import make_schedule
from jldm.diffusion.vlb import discretized_gaussian_logp, pixels_to_data, vlb, vlb_term

T, D, M, S = 40, 6, 0.1, 0.4  # data N(M, S^2) per dimension, quantised to 8 bits on [-1, 1]
SCHEDULE = make_schedule("linear", T, 1e-3, 0.2)
BETA = np.asarray(SCHEDULE.betas, np.float64)
ABAR = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
ABAR_PREV = np.concatenate([[1.0], ABAR[:-1]])
TILDE = BETA * (1 - ABAR_PREV) / (1 - ABAR)


def pixels(n, seed=0):
    """n 8-bit images of D pixels from N(M, S^2) on [-1, 1], the two extreme levels included."""
    x = M + S * np.random.default_rng(seed).normal(size=(n, D))
    pix = np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)
    pix[0, :2] = (0, 255)
    return pix


def gain(t):
    """k_t of the exact posterior mean E[x0 | x_t] = M + k_t (x_t - sqrt(abar_t) M)."""
    return np.sqrt(ABAR[t]) * S**2 / (ABAR[t] * S**2 + 1 - ABAR[t])


def exact_model(prediction):
    """The network output that is the exact posterior mean of N(M, S^2) data, as prediction."""

    def model_fn(x, t):
        a = jnp.sqrt(SCHEDULE.alphas_cumprod[t])[:, None]
        s = jnp.sqrt(1 - SCHEDULE.alphas_cumprod[t])[:, None]
        k = a * S**2 / (a**2 * S**2 + s**2)
        x0 = M + k * (x - a * M)
        eps = (x - a * x0) / s
        return {"x0": x0, "eps": eps, "v": a * eps - s * x0}[prediction]

    return model_fn


def fixed_var(variance):
    v = TILDE.copy() if variance == "small" else BETA.copy()
    if variance == "small":
        v[0] = TILDE[1]
    return v


def decoder_nll64(x0, mean, std):
    """-log P(bin of x0) under N(mean, std^2), float64, bins half a level wide either side."""
    half = 1 / 255
    a = np.where(x0 < -1 + half / 2, -np.inf, (x0 - half - mean) / std)
    b = np.where(x0 > 1 - half / 2, np.inf, (x0 + half - mean) / std)
    # Phi(b) - Phi(a), or sf(a) - sf(b) above the mean where both CDFs round to 1
    mass = np.where(
        a > 0, stats.norm.sf(a) - stats.norm.sf(b), stats.norm.cdf(b) - stats.norm.cdf(a)
    )
    return -np.log(mass).sum(-1)


def term64(x0, t, noise, variance, clip=False):
    """L_t by the textbook formulas in float64: posterior means, Gaussian KL, decoder."""
    x_t = np.sqrt(ABAR[t]) * x0 + np.sqrt(1 - ABAR[t]) * noise
    x0_hat = M + gain(t) * (x_t - np.sqrt(ABAR[t]) * M)
    if clip:
        x0_hat = np.clip(x0_hat, -1, 1)
    var_p = fixed_var(variance)[t]
    if t == 0:
        return decoder_nll64(x0, x0_hat, np.sqrt(var_p))
    c0 = BETA[t] * np.sqrt(ABAR_PREV[t]) / (1 - ABAR[t])
    c1 = np.sqrt(1 - BETA[t]) * (1 - ABAR_PREV[t]) / (1 - ABAR[t])
    mu_q, mu_p, var_q = c0 * x0 + c1 * x_t, c0 * x0_hat + c1 * x_t, TILDE[t]
    kl = 0.5 * np.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5
    return kl.sum(-1)


def prior_kl64(x0):
    mean, var = np.sqrt(ABAR[-1]) * x0, 1 - ABAR[-1]
    return (0.5 * (mean**2 + var - 1 - np.log(var))).sum(-1)


def expected_vlb64(x0, variance):
    """E over the x_t draws of the full bound, per image: the KLs in closed form, the decoder's
    expectation over x_1 by 80-point Gauss-Hermite quadrature."""
    total = prior_kl64(x0)
    for t in range(1, T):
        c0 = BETA[t] * np.sqrt(ABAR_PREV[t]) / (1 - ABAR[t])
        k, a = gain(t), np.sqrt(ABAR[t])
        sq = (1 - k * a) ** 2 * (x0 - M) ** 2 + k**2 * (1 - ABAR[t])  # E (x0 - x0_hat)^2
        var_p, var_q = fixed_var(variance)[t], TILDE[t]
        kl = 0.5 * np.log(var_p / var_q) + (var_q + c0**2 * sq) / (2 * var_p) - 0.5
        total = total + kl.sum(-1)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    dec = sum(
        w * term64(x0, 0, z * np.ones_like(x0), variance)
        for z, w in zip(nodes, weights, strict=True)
    )
    # The decoder's nodes move every dimension together; its dimensions are independent and
    # the nll is a sum over them, so the expectation of the sum is the same.
    return total + dec


@pytest.mark.parametrize(
    ("prediction", "variance", "clip"),
    [(p, v, False) for p in ("eps", "x0", "v") for v in ("small", "large")]
    + [("eps", "small", True)],
)
def test_every_term_matches_the_float64_textbook_formulas(prediction, variance, clip):
    x0_u8 = pixels(5)
    x0 = np.asarray(pixels_to_data(jnp.asarray(x0_u8)), np.float64)
    noise = np.random.default_rng(1).normal(size=(T, 5, D))
    # Noise 3x wider than the data: x0_hat leaves [-1, 1] at some terms, so clip matters.
    noise *= 3.0 if clip else 1.0
    f = jax.jit(
        lambda t, n: vlb_term(
            exact_model(prediction), SCHEDULE, prediction, jnp.asarray(x0, jnp.float32), t, n,
            variance, clip=clip,
        )
    )  # fmt: skip
    clipped = []
    for t in range(T):
        got = np.asarray(f(jnp.full((5,), t), jnp.asarray(noise[t], jnp.float32)), np.float64)
        want = term64(x0, t, noise[t], variance, clip)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        clipped.append(np.any(want != term64(x0, t, noise[t], variance)))
    assert any(clipped) == clip


def test_the_full_sum_and_the_stratified_estimate_average_to_the_closed_form():
    reps = 512
    x0_u8 = np.repeat(pixels(2, seed=3), reps, axis=0)
    x0 = pixels_to_data(jnp.asarray(x0_u8))
    keys = jax.random.split(jax.random.PRNGKey(4), 2 * reps)
    model = exact_model("eps")
    run = jax.jit(
        lambda k, terms: vlb(model, SCHEDULE, "eps", x0, k, terms, clip=False), static_argnums=1
    )
    expected = expected_vlb64(np.asarray(x0, np.float64)[::reps], "small")
    for terms, count in ((None, T), (8, 8)):
        nats, nfe = run(keys, terms)
        assert nfe == count
        nats = np.asarray(nats, np.float64).reshape(2, reps)
        se = nats.std(1) / np.sqrt(reps)
        assert np.all(np.abs(nats.mean(1) - expected) < 4 * se + 1e-3), (nats.mean(1), expected)
    # K = T strata of one index each draw the full sum's own terms.
    np.testing.assert_allclose(run(keys, T)[0], run(keys, None)[0], rtol=1e-6)


def test_the_bound_is_the_same_for_each_prediction_and_each_image_alone():
    x0 = pixels_to_data(jnp.asarray(pixels(4, seed=5)))
    keys = jax.random.split(jax.random.PRNGKey(6), 4)
    bound = jax.jit(lambda p, x, k: vlb(exact_model(p), SCHEDULE, p, x, k)[0], static_argnums=0)
    out = {p: np.asarray(bound(p, x0, keys)) for p in ("eps", "x0", "v")}
    np.testing.assert_allclose(out["x0"], out["eps"], rtol=1e-4)
    np.testing.assert_allclose(out["v"], out["eps"], rtol=1e-4)
    np.testing.assert_allclose(bound("eps", x0[2:3], keys[2:3]), out["eps"][2:3], rtol=1e-5)


@pytest.mark.parametrize(
    ("level", "mean", "std"),
    [(0, -1.0, 0.01), (255, 0.99, 0.02), (128, 0.0, 0.005), (3, -0.9, 0.004), (200, 0.9, 0.01)],
)
def test_decoder_mass_is_the_integral_of_the_gaussian_over_the_pixel_bin(level, mean, std):
    x = -1 + 2 * level / 255
    lo = -np.inf if level == 0 else x - 1 / 255
    hi = np.inf if level == 255 else x + 1 / 255
    # Integrate exp(log pdf - its log at the bin) so far-tail bins keep their digits.
    centre = np.clip(mean, max(lo, -5.0), min(hi, 5.0))
    ref_log = stats.norm.logpdf(centre, mean, std)
    mass, _ = integrate.quad(
        lambda u: np.exp(stats.norm.logpdf(u, mean, std) - ref_log), lo, hi, epsabs=0, epsrel=1e-12
    )
    got = discretized_gaussian_logp(jnp.float32(x), jnp.float32(mean), jnp.float32(std))
    np.testing.assert_allclose(float(got), np.log(mass) + ref_log, rtol=1e-4, atol=1e-5)


def test_the_levels_masses_sum_to_one():
    x = pixels_to_data(jnp.arange(256))
    mean, std = jnp.array([[0.3], [-0.999], [2.0]]), jnp.array([[0.01], [0.5], [0.1]])
    mass = jax.jit(lambda: jnp.exp(discretized_gaussian_logp(x, mean, std)).sum(-1))()
    np.testing.assert_allclose(mass, 1.0, atol=1e-5)
