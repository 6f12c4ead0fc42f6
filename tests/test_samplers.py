"""DDPM and DDIM as the frame's ancestral step (jldm.diffusion.solvers.ancestral on a discrete
model's denoiser) against float64 references and exact scores of known data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.diffusion import frame as fr
from jldm.diffusion import solvers
from jldm.diffusion.guidance import classifier_free_guidance
from jldm.diffusion.schedules import make_schedule
from jldm.diffusion.score_samplers import langevin_corrector

SCHED = make_schedule("linear", 200, 1e-4, 0.05)
FINE = make_schedule("linear", 1000, 1e-4, 0.02)


def gaussian_eps(mu: float, s: float, sched=SCHED):
    """Exact eps(x_t, t) when the data are N(mu, s^2 I): E[eps | x_t] in closed form."""

    def model_fn(x, t):
        abar = sched.alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        a, v = jnp.sqrt(abar), abar * s**2 + (1 - abar)
        return (x - a * mu) * jnp.sqrt(1 - abar) / v

    return model_fn


def step_noise(key, shape):
    """The z the first step of a grid draws from key (scan_grid: fold_in(split(key)[0], 0))."""
    return np.asarray(jax.random.normal(jax.random.fold_in(jax.random.split(key)[0], 0), shape))


def ddim_grid(frame: fr.Frame, steps: int) -> np.ndarray:
    """DDIM's grid: `steps` timesteps evenly spaced from T-1 down to 0, then sigma = 0."""
    return fr.with_zero(fr.native_sigmas(frame, steps, frame.sigma_max))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ancestral_step_is_the_ddpm_posterior_in_float64(prediction):
    """eta = 1 from sigma_t to sigma_{t-1} (0 at t = 0), in x = sqrt(abar) xbar, is a draw from
    q(x_{t-1} | x_t, x0_hat): mean beta sqrt(abar_prev) / (1 - abar) x0 + (1 - abar_prev)
    sqrt(1 - beta) / (1 - abar) x_t, variance beta (1 - abar_prev) / (1 - abar), written out
    in numpy in float64 for the network's fixed output read as each prediction type."""
    rng = np.random.default_rng(0)
    x_t = rng.normal(size=(3, 4, 4, 1))
    out = rng.normal(size=x_t.shape)
    betas = np.linspace(1e-4, 0.05, 200)
    abar = np.cumprod(1 - betas)
    frame = fr.discrete_frame(SCHED, prediction, False)
    d = frame.denoiser(lambda x, t: jnp.asarray(out, jnp.float32))
    key = jax.random.PRNGKey(7)
    noise = step_noise(key, x_t.shape)
    for t in (150, 1, 0):
        a, s = np.sqrt(abar[t]), np.sqrt(1 - abar[t])
        x0 = {"eps": (x_t - s * out) / a, "x0": out, "v": a * x_t - s * out}[prediction]
        abar_prev = abar[t - 1] if t > 0 else 1.0
        mean = (betas[t] * np.sqrt(abar_prev) / (1 - abar[t])) * x0 + (
            (1 - abar_prev) * np.sqrt(1 - betas[t]) / (1 - abar[t])
        ) * x_t
        var = betas[t] * (1 - abar_prev) / (1 - abar[t])
        expected = mean + np.sqrt(var) * noise
        sigmas = np.sqrt([1 / abar[t] - 1, 1 / abar_prev - 1])
        xbar = jnp.asarray(x_t / a, jnp.float32)
        got = solvers.ancestral(d, xbar, jnp.asarray(sigmas, jnp.float32), key, None, 1.0)
        np.testing.assert_allclose(np.sqrt(abar_prev) * np.asarray(got), expected, 2e-4, 2e-4)


def test_ddim_with_exact_score_of_a_point_mass_lands_on_it():
    # Data = a single point mu: x0_hat = mu at every step, so DDIM (eta=0) is exact.
    mu = 0.37
    frame = fr.discrete_frame(SCHED, "eps", False)
    sigmas = ddim_grid(frame, 10)
    xbar = fr.prior(frame, jax.random.PRNGKey(1), (16, 3), float(sigmas[0]))
    x = solvers.ancestral(frame.denoiser(gaussian_eps(mu, 0.0)), xbar, sigmas)
    np.testing.assert_allclose(x, mu, atol=1e-4)


def test_clipped_ddim_walks_the_path_of_its_clipped_estimate():
    """A network whose x0 estimates overshoot a point mass mu in {-1, 1}^d twice over: clipped,
    they are mu, and the frame's step (its eps from the clipped x0) lands every DDIM step on
    mu's own path sqrt(abar) mu + sqrt(1 - abar) z (float64). Unclipped, the steps follow 2 mu's
    path instead."""
    rng = np.random.default_rng(3)
    mu, z = np.sign(rng.normal(size=(8, 6))), rng.normal(size=(8, 6))
    on_path = lambda sigma: mu + sigma * z  # in xbar = x / sqrt(abar): mu's path at sigma

    def overshoot(x, t):  # the eps under which x0_hat = 2 mu
        a = SCHED.alphas_cumprod[t][:, None]
        return (x - jnp.sqrt(a) * 2 * mu) / jnp.sqrt(1 - a)

    err = {}
    for clip in (True, False):
        frame = fr.discrete_frame(SCHED, "eps", clip)
        d = frame.denoiser(overshoot)
        sigmas = ddim_grid(frame, 10)
        ts = np.linspace(199, 0, 10).round().astype(int)  # DDIM's timesteps
        np.testing.assert_allclose(sigmas[:-1], frame.levels[ts], rtol=1e-6)
        x, err[clip] = jnp.asarray(on_path(sigmas[0]), jnp.float32), 0.0
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            x = solvers.ancestral(d, x, jnp.asarray([sigma, sigma_next]))
            # compared in x, where the path's scale is 1 at every step
            scale = 1 / np.sqrt(1 + float(sigma_next) ** 2)
            err[clip] = max(err[clip], scale * np.abs(x - on_path(sigma_next)).max())
    assert err[True] < 1e-4 and err[False] > 0.1, err


def test_ddim_eta0_is_deterministic_in_the_start_noise():
    frame = fr.discrete_frame(SCHED, "eps", True)
    d = frame.denoiser(gaussian_eps(0.5, 0.7))
    sigmas = ddim_grid(frame, 20)
    xbar = fr.prior(frame, jax.random.PRNGKey(0), (8, 2), float(sigmas[0]))
    run = jax.jit(lambda k, eta: solvers.ancestral(d, xbar, sigmas, k, None, eta))
    a, b = run(jax.random.PRNGKey(1), 0.0), run(jax.random.PRNGKey(2), 0.0)
    np.testing.assert_array_equal(a, b)
    c = run(jax.random.PRNGKey(1), 1.0)
    assert float(jnp.abs(a - c).max()) > 1e-2


def test_ddim_follows_the_probability_flow_back_to_the_data():
    """For N(mu, s^2) data the flow maps x0 to x_T = a_T mu + sqrt(a_T^2 s^2 + 1 - a_T^2) / s
    (x0 - mu), a_T = sqrt(abar_T); DDIM on all 1000 timesteps from that x_T returns x0."""
    mu, s = 0.3, 0.5
    frame = fr.discrete_frame(FINE, "eps", False)
    x0 = mu + s * jax.random.normal(jax.random.PRNGKey(3), (64, 2))
    abar_T = float(FINE.alphas_cumprod[-1])
    a = np.sqrt(abar_T)
    x_T = a * mu + np.sqrt(abar_T * s**2 + 1 - abar_T) / s * (np.asarray(x0) - mu)
    sigmas = ddim_grid(frame, 1000)
    d = frame.denoiser(gaussian_eps(mu, s, FINE))
    back = jax.jit(lambda x: solvers.ancestral(d, x, sigmas))(jnp.asarray(x_T / a, jnp.float32))
    np.testing.assert_allclose(back, x0, atol=1.5e-2)


def test_ddpm_sampler_reproduces_gaussian_data_moments():
    """Eta 1 on every timestep from x_T ~ N(0, I) (the frame's prior at sigma_T)."""
    mu, s = -0.4, 0.6
    frame = fr.discrete_frame(SCHED, "eps", False)
    sigmas = ddim_grid(frame, 200)
    assert len(sigmas) == 201 and np.all(np.diff(sigmas) < 0)
    k_init, k_run = jax.random.split(jax.random.PRNGKey(0))
    xbar = fr.prior(frame, k_init, (4000, 2), float(sigmas[0]))
    d = frame.denoiser(gaussian_eps(mu, s))
    x = jax.jit(lambda x, k: solvers.ancestral(d, x, sigmas, k, None, 1.0))(xbar, k_run)
    x = np.asarray(x, np.float64)
    assert abs(x.mean() - mu) < 0.03
    assert abs(x.std() - s) < 0.03


def test_ddim_grid_descends_over_the_timesteps_to_zero():
    """The discrete frame's native grid is DDIM's: timesteps linspace(T-1, 0, steps) rounded."""
    frame = fr.discrete_frame(FINE, "eps", False)
    sigmas = ddim_grid(frame, 50)
    want = frame.levels[np.linspace(999, 0, 50).round().astype(int)]
    np.testing.assert_allclose(sigmas[:-1], want, rtol=1e-6)
    assert sigmas[-1] == 0 and len(sigmas) == 51 and np.all(np.diff(sigmas) < 0)
    assert np.isclose(sigmas[0], frame.sigma_max, rtol=1e-6)
    with pytest.raises(ValueError):
        fr.native_sigmas(frame, 1001, frame.sigma_max)


def test_guidance_scale_one_is_the_conditional_model_and_scale_combines_linearly():
    apply_fn = lambda x, t, c: x * c[:, None]
    x = jnp.ones((2, 3))
    cond, null = jnp.array([2.0, 3.0]), jnp.array([1.0, 1.0])
    t = jnp.zeros((2,), jnp.int32)
    np.testing.assert_allclose(
        classifier_free_guidance(apply_fn, cond, null, 1.0)(x, t), apply_fn(x, t, cond)
    )
    g = classifier_free_guidance(apply_fn, cond, null, 3.0)(x, t)
    np.testing.assert_allclose(g, 1 + 3 * (cond[:, None] - 1) * x)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_heun_follows_the_gaussian_probability_flow_far_closer_than_ddim(prediction):
    """Data N(mu, s^2): the flow maps x_T to mu + (x_T - a_T mu) s / sqrt(a_T^2 s^2 + 1 - a_T^2).

    On DDIM's grid Heun is second order in the step (error 0.026 at 20 steps, 0.0037 at 50),
    DDIM first order (0.18, 0.074).
    """
    mu, s = 0.3, 0.5
    eps_fn = gaussian_eps(mu, s, FINE)

    def model_fn(x, t):  # the same exact model as eps or v output
        if prediction == "eps":
            return eps_fn(x, t)
        abar = FINE.alphas_cumprod[t].reshape(-1, 1)
        x0 = (x - jnp.sqrt(1 - abar) * eps_fn(x, t)) / jnp.sqrt(abar)
        return jnp.sqrt(abar) * eps_fn(x, t) - jnp.sqrt(1 - abar) * x0

    frame = fr.discrete_frame(FINE, prediction, False)
    d = frame.denoiser(model_fn)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    a_T = float(np.sqrt(np.float64(FINE.alphas_cumprod[-1])))
    exact = mu + (np.asarray(x_T, np.float64) - a_T * mu) * s / np.sqrt(a_T**2 * s**2 + 1 - a_T**2)
    err = {}
    for n in (20, 50):
        sigmas = ddim_grid(frame, n)
        heun = jax.jit(lambda x, sigmas=sigmas: solvers.heun(d, x, sigmas))(x_T / a_T)
        ddim = jax.jit(lambda x, sigmas=sigmas: solvers.ancestral(d, x, sigmas))(x_T / a_T)
        err["heun", n] = np.abs(np.asarray(heun) - exact).max()
        err["ddim", n] = np.abs(np.asarray(ddim) - exact).max()
    assert err["heun", 50] < 0.006 and err["heun", 20] < err["ddim", 20] / 5, err
    assert err["heun", 20] / err["heun", 50] > 4 > 3 > err["ddim", 20] / err["ddim", 50], err


def test_pc_with_the_exact_eps_corrects_the_variance_ancestral_steps_lose():
    """Data N(mu, s^2): 50 coarse ancestral steps shrink the spread (std 0.443 for 0.5); one
    Langevin corrector step each (score (D - xbar) / sigma^2 of the exact eps model, snr 0.16)
    restores part: the std's error falls to 0.48-0.58 of the ancestral one over four noise
    keys (40000 values: standard error of a std 0.002), bound 0.7."""
    mu, s, steps, n = 0.3, 0.5, 50, 20000
    frame = fr.discrete_frame(FINE, "eps", False)
    d = frame.denoiser(gaussian_eps(mu, s, FINE))
    score = fr.score_of(d)
    z = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
    sigma = float(frame.levels[500])  # xbar = x0 + sigma n ~ N(mu, s^2 + sigma^2)
    np.testing.assert_allclose(
        score(z, jnp.float32(sigma)), -(z - mu) / (s**2 + sigma**2), rtol=1e-5, atol=1e-5
    )
    sigmas = ddim_grid(frame, steps)
    xbar_T = z / np.sqrt(FINE.alphas_cumprod[-1])  # x_T = z ~ N(0, I)

    def walk(n_corrector):
        def body(x, inp):
            i, sigma, sigma_next = inp
            key = jax.random.fold_in(jax.random.PRNGKey(2), i)
            if n_corrector:
                x = langevin_corrector(score, jax.random.fold_in(key, 1), x, sigma, 0.16, 1)
            return solvers.ancestral(d, x, jnp.stack([sigma, sigma_next]), key, None, 1.0), None

        grid = (jnp.arange(steps), sigmas[:-1], sigmas[1:])
        run = jax.jit(lambda x: jax.lax.scan(body, x, grid)[0])
        return np.asarray(run(xbar_T), np.float64)

    ancestral, pc = walk(0), walk(1)
    assert abs(pc.mean() - mu) < 0.02 and abs(pc.std() - s) < 0.04, (pc.mean(), pc.std())
    assert abs(pc.std() - s) < 0.7 * abs(ancestral.std() - s), (pc.std(), ancestral.std())
