"""Loss weightings: min-SNR factors against their closed forms and the losses that use them;
likelihood weighting's time sampler against its CDF, the CDF against quadrature, and the
importance-sampled loss against a plain Monte-Carlo estimate and against the ELBO of Gaussian
data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.build import objectives, samplers
from jldm.build.ranges import check_config
from jldm.diffusion import weighting
from jldm.diffusion.losses import make_ddpm_loss
from jldm.diffusion.schedules import make_schedule, predict_x0_eps, target
from jldm.diffusion.score_losses import make_sde_loss
from jldm.diffusion.sde import VESDE, VPSDE, SubVPSDE
from jldm.errors import UserError
from tests.tiny import tiny_config

SDES = {"vesde": VESDE(0.01, 50.0), "vpsde": VPSDE(0.1, 20.0), "subvpsde": SubVPSDE(0.1, 20.0)}
EPS_T = 1e-5
MU, S, DIM = 0.3, 0.6, 4


def test_min_snr_factors_are_the_papers_closed_forms_for_each_ddpm_target():
    sched = make_schedule("cosine", 1000)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    snr, gamma = abar / (1 - abar), 5.0
    a, s = jnp.sqrt(sched.alphas_cumprod), jnp.sqrt(1 - sched.alphas_cumprod)
    want = {
        "eps": np.minimum(snr, gamma) / snr,
        "x0": np.minimum(snr, gamma),
        "v": np.minimum(snr, gamma) / (snr + 1),
    }
    for name, w in want.items():
        got = weighting.min_snr_factor(name, a, s, gamma)
        np.testing.assert_allclose(got, w, rtol=2e-4, err_msg=name)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_x0_weight_is_the_ratio_of_target_error_to_x0_error_under_the_schedule(prediction):
    """|out - target|^2 = w |x0_hat - x0|^2 with x0_hat read by the schedule's own conversion."""
    sched = make_schedule("cosine", 1000)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    t = jnp.array([3, 200, 500, 900])
    x0, noise = jax.random.normal(k[0], (4, 6)), jax.random.normal(k[1], (4, 6))
    abar = sched.alphas_cumprod[t][:, None]
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
    out = target(sched, x0, t, noise, prediction) + 0.1 * jax.random.normal(k[2], (4, 6))
    x0_hat, _ = predict_x0_eps(sched, x_t, t, out, prediction)
    ratio = jnp.sum((out - target(sched, x0, t, noise, prediction)) ** 2, -1) / jnp.sum(
        (x0_hat - x0) ** 2, -1
    )
    a, s = jnp.sqrt(abar[:, 0]), jnp.sqrt(1 - abar[:, 0])
    np.testing.assert_allclose(ratio, weighting.scaled_x0_weight(prediction, a, s) / s**2, 2e-3)


def test_x0_weight_of_the_flow_velocity_and_of_edm():
    t = jnp.array([0.05, 0.3, 0.8])
    # flow: x = (1 - t) x0 + t z, v = z - x0, x0_hat = x - t v_hat: error ratio 1 / t^2
    np.testing.assert_allclose(weighting.scaled_x0_weight("velocity", 1 - t, t) / t**2, 1 / t**2)
    # edm: lambda = 1 / sigma^2 + 1 / sigma_data^2
    sig = jnp.array([0.01, 0.5, 20.0])
    got = weighting.scaled_x0_weight("edm", 1.0, sig, 0.5) / sig**2
    np.testing.assert_allclose(got, 1 / sig**2 + 4.0, rtol=1e-6)


def test_ddpm_loss_with_min_snr_has_the_mean_of_its_factor():
    """A network that outputs 0 has eps error eps^2 (mean 1 per pixel), so the min-SNR loss
    estimates E_t[min(SNR, 5) / SNR], t uniform over the 1000 steps."""
    sched = make_schedule("cosine", 1000)
    loss_fn = make_ddpm_loss(
        lambda p, x, t, y, train, rngs: jnp.zeros_like(x), sched, "eps", weighting="min_snr"
    )
    n = 8192
    batch = {"image": jnp.zeros((n, 2, 2, 1)), "label": jnp.zeros((n,), jnp.int32)}
    loss, _ = jax.jit(lambda b: loss_fn(None, jax.random.PRNGKey(1), b))(batch)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    f = np.minimum(abar / (1 - abar), 5.0) * (1 - abar) / abar
    # per sample: f(t) times a mean of 4 chi^2_1 draws; variance E[f^2] (1 + 2/4) - E[f]^2
    se = np.sqrt((np.mean(f**2) * 1.5 - np.mean(f) ** 2) / n)
    assert abs(float(loss) - f.mean()) < 4 * se, (float(loss), f.mean(), se)


def gaussian_score(sde):
    """The exact score of p_t for data N(MU, S^2 I)."""

    def fn(params, x, t):
        a, std = (v.reshape(-1, 1) for v in sde.mean_coef_std(t))
        return -(x - a * MU) / (a**2 * S**2 + std**2)

    return fn


def _data(key, n):
    return MU + S * jax.random.normal(key, (n, DIM))


@pytest.mark.parametrize("name", list(SDES))
def test_sde_loss_with_min_snr_weighs_each_time_by_min_snr_over_snr(name):
    """A zero score leaves 0.5 |z|^2 (mean DIM / 2) per sample; min-SNR scales it by
    min(SNR, 5) / SNR at SNR = alpha^2 / std^2, t uniform on [eps_t, T]."""
    sde = SDES[name]
    loss_fn = make_sde_loss(lambda p, x, t: jnp.zeros_like(x), sde, EPS_T, weighting="min_snr")
    n = 8192
    loss, _ = jax.jit(lambda x: loss_fn(None, jax.random.PRNGKey(2), {"x": x}))(jnp.zeros((n, 4)))
    t = np.linspace(EPS_T, 1.0, 200001)
    a, std = (np.asarray(v, np.float64) for v in sde.mean_coef_std(jnp.asarray(t)))
    snr = a**2 / std**2
    f = np.minimum(snr, 5.0) / snr
    se = np.sqrt((np.mean(f**2) * (DIM / 2) ** 2 * (1 + 2 / DIM) - (np.mean(f) * DIM / 2) ** 2) / n)
    assert abs(float(loss) - DIM / 2 * f.mean()) < 4 * se, (float(loss), DIM / 2 * f.mean())


def _quad_antiderivative(sde, t):
    """int_eps^t g^2 / std^2 by the trapezoid rule on a log grid, float64 from float32 pieces."""
    grid = np.geomspace(EPS_T, sde.T, 400001)
    dens = np.asarray(weighting.likelihood_weight(sde, jnp.asarray(grid)), np.float64)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return np.interp(t, grid, cum), cum[-1]


@pytest.mark.parametrize("name", list(SDES))
def test_likelihood_cdf_is_the_integral_of_g2_over_std2(name):
    sde = SDES[name]
    t = np.array([2e-5, 1e-3, 0.05, 0.3, 0.7, 1.0])
    partial, total = _quad_antiderivative(sde, t)
    np.testing.assert_allclose(weighting.likelihood_norm(sde, EPS_T), total, rtol=1e-4)
    np.testing.assert_allclose(weighting.likelihood_cdf(sde, t, EPS_T), partial / total, atol=2e-4)


@pytest.mark.parametrize("name", list(SDES))
def test_likelihood_times_follow_their_cdf(name):
    """Kolmogorov-Smirnov: with 20000 draws, sup |F_n - F| < 1.63 / sqrt(n) at level 1%."""
    sde = SDES[name]
    n = 20000
    t = np.sort(np.asarray(weighting.likelihood_times(sde, jax.random.PRNGKey(3), n, EPS_T)))
    assert t.min() >= EPS_T and t.max() <= sde.T
    cdf = weighting.likelihood_cdf(sde, t.astype(np.float64), EPS_T)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(n), ks


def _likelihood_estimates(sde, batches=10, n=5000, plain_n=1_000_000):
    """(importance-sampled loss, its standard error) over batches of n, and the same for the
    plain estimate on plain_n draws: t ~ U(eps_t, T), weight (T - eps_t) g^2 / std^2 on
    0.5 |std s + z|^2. That weight grows as 1 / t near eps_t, where 0.5 |std s + z|^2 tends to
    0.5 |z|^2: the plain estimate needs many more draws for the same error."""
    loss_fn = jax.jit(make_sde_loss(gaussian_score(sde), sde, EPS_T, weighting="likelihood"))
    x = _data(jax.random.PRNGKey(4), batches * n)
    keys = jax.random.split(jax.random.PRNGKey(5), batches)
    per_batch = np.array(
        [float(loss_fn(None, k, {"x": x[i * n : (i + 1) * n]})[0]) for i, k in enumerate(keys)]
    )

    @jax.jit
    def plain(key):
        k_x, k_t, k_z = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (plain_n,), minval=EPS_T, maxval=sde.T)
        x, z = _data(k_x, plain_n), jax.random.normal(k_z, (plain_n, DIM))
        a, std = (v.reshape(-1, 1) for v in sde.mean_coef_std(t))
        s = gaussian_score(sde)(None, a * x + std * z, t)
        per = 0.5 * jnp.sum(jnp.square(std * s + z), -1)
        return (sde.T - EPS_T) * weighting.likelihood_weight(sde, t) * per

    w = np.asarray(plain(jax.random.PRNGKey(6)), np.float64)
    return (
        (per_batch.mean(), per_batch.std(ddof=1) / np.sqrt(batches)),
        (w.mean(), w.std(ddof=1) / np.sqrt(plain_n)),
    )


@pytest.fixture(scope="module")
def estimates():
    return {name: _likelihood_estimates(sde) for name, sde in SDES.items()}


@pytest.mark.parametrize("name", list(SDES))
def test_importance_sampled_likelihood_loss_matches_the_plain_estimate(estimates, name):
    (imp, se_imp), (plain, se_plain) = estimates[name]
    assert abs(imp - plain) < 4 * np.hypot(se_imp, se_plain), (imp, se_imp, plain, se_plain)
    assert se_imp < se_plain  # the point of importance sampling


@pytest.mark.parametrize("name", list(SDES))
def test_likelihood_loss_is_the_negative_elbo_up_to_a_model_free_constant(estimates, name):
    """For data N(MU, S^2 I) and its exact score, loss + C equals H(p_eps) + KL(p_T || prior)
    (the bound is tight at the true score), with the model-free C = E[-log prior(x_T)] -
    0.5 DIM int_eps^T (g^2 / std^2 + 2 f) dt (Song et al. 2021, Theorem 1 in DSM form)."""
    sde = SDES[name]
    (imp, se_imp), _ = estimates[name]
    grid = np.geomspace(EPS_T, sde.T, 400001)
    tg = jnp.asarray(grid)
    g2 = np.asarray(sde.diffusion(tg), np.float64) ** 2
    _, std = sde.mean_coef_std(tg)
    f = np.asarray(sde.drift_coef(tg), np.float64) * np.ones_like(grid)
    integrand = g2 / np.asarray(std, np.float64) ** 2 + 2 * f
    integral = np.sum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(grid))
    a_t, std_t = (float(v) for v in sde.mean_coef_std(jnp.float32(sde.T)))
    var_t, mean_t, prior_var = a_t**2 * S**2 + std_t**2, a_t * MU, sde.prior_std**2
    cross = 0.5 * DIM * (np.log(2 * np.pi * prior_var) + (var_t + mean_t**2) / prior_var)
    c = cross - 0.5 * DIM * integral
    a_e, std_e = (float(v) for v in sde.mean_coef_std(jnp.float32(EPS_T)))
    entropy_eps = 0.5 * DIM * np.log(2 * np.pi * np.e * (a_e**2 * S**2 + std_e**2))
    kl_t = cross - 0.5 * DIM * np.log(2 * np.pi * np.e * var_t)
    # the quadrature of the 1/t-like integrand is good to ~1e-3 nats; the rest is Monte Carlo
    assert abs(imp + c - (entropy_eps + kl_t)) < 4 * se_imp + 0.01, (imp + c, entropy_eps + kl_t)


def _config(objective, **diffusion):
    known = objectives.REGISTRY[objective]
    over = {"diffusion.objective": objective, "sample.sampler": samplers.samplers_of(known)[0]}
    over.update({f"diffusion.{k}": v for k, v in diffusion.items()})
    return tiny_config("/unused", **over)


def test_weightings_are_refused_where_they_do_not_apply():
    for objective in ("ddpm", "ncsn", "edm", "flow"):
        with pytest.raises(UserError, match="likelihood needs a continuous-time SDE"):
            objectives.get(_config(objective, weighting="likelihood"))
        objectives.get(_config(objective, weighting="min_snr"))
    for objective in ("vesde", "vpsde", "subvpsde"):
        objectives.get(_config(objective, weighting="likelihood"))
    with pytest.raises(UserError, match="weighting='snr' is not known"):
        objectives.get(_config("ddpm", weighting="snr"))
    with pytest.raises(UserError, match="min_snr_gamma"):
        check_config(_config("ddpm", weighting="min_snr", min_snr_gamma=0.0))
