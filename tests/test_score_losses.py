"""Score matching losses against float64 references, toy mixtures, and short MLP training runs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jldm.diffusion import toy
from jldm.diffusion.score_losses import (
    geometric_sigmas,
    make_dsm_loss,
    make_esm_loss,
    make_ism_loss,
    make_ncsn_loss,
    make_sde_loss,
    make_sliced_loss,
    sample_probe,
    sq_norm,
)
from jldm.diffusion.sde import VPSDE
from jldm.nn.mlp import ScoreMLP

D, B = 3, 6
RNG = np.random.default_rng(0)
A = RNG.normal(size=(D, D))
P = A @ A.T + np.eye(D)  # symmetric, for the quadratic energy
LIN = {"A": A, "b": RNG.normal(size=D), "w": RNG.normal(size=D)}
X = RNG.normal(size=(B, D))


def linear_score(params, x, c):
    """s(x, c) = A x + b + c w: its Jacobian is A, so tr(grad_x s) = tr A exactly."""
    return x @ params["A"].T + params["b"] + c[:, None] * params["w"]


def quadratic_energy(params, x, c):
    """f(x, c) = x^T P x / 2 + (q + c r)^T x, so -grad_x f = -P x - q - c r. -> [B]."""
    lin = params["q"] + c[:, None] * params["r"]
    return 0.5 * jnp.einsum("bi,ij,bj->b", x, params["P"], x) + jnp.sum(lin * x, axis=-1)


def f32(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)


def np_score(x, c):
    return x @ A.T + LIN["b"] + np.asarray(c)[:, None] * LIN["w"]


def run(loss_fn, rng=0, x=X):
    loss, metrics = loss_fn(f32(LIN), jax.random.PRNGKey(rng), {"x": jnp.asarray(x)})
    assert float(loss) == pytest.approx(float(metrics["loss"]))
    return float(loss)


def test_esm_matches_float64_reference():
    # True score of N(0, I) is -x; 0.5 * per-sample sum of squares, mean over the batch.
    got = run(make_esm_loss(linear_score, lambda x: -x, sigma=0.3))
    err = np_score(X, np.full(B, 0.3)) + X
    assert got == pytest.approx(0.5 * np.mean(np.sum(err**2, -1)), rel=1e-5)


def test_ism_exact_trace_matches_float64_reference():
    got = run(make_ism_loss(linear_score))
    s = np_score(X, np.zeros(B))
    assert got == pytest.approx(np.mean(0.5 * np.sum(s**2, -1) + np.trace(A)), rel=1e-5)


@pytest.mark.parametrize(("probe", "vr"), [("rademacher", True), ("gaussian", False)])
def test_sliced_matches_float64_reference_for_its_probes(vr, probe):
    n = 4
    got = run(make_sliced_loss(linear_score, n, probe, vr), rng=3)
    v = np.asarray(sample_probe(jax.random.PRNGKey(3), (n, B, D), probe), np.float64)
    s = np_score(X, np.zeros(B))
    vav = np.einsum("nbi,ij,nbj->nb", v, A, v)
    if vr:
        ref = np.mean(0.5 * np.sum(s**2, -1) + vav.mean(0))
    else:
        ref = np.mean(vav + 0.5 * np.einsum("nbi,bi->nb", v, s) ** 2)
    assert got == pytest.approx(ref, rel=1e-5)


def tanh_score(params, x, c):
    """A nonlinear per-sample score network whose Jacobian trace is not constant."""
    return jnp.tanh(x @ params["w1"]) @ params["w2"] + x**3 * params["b"] + c[:, None]


def test_sliced_is_unbiased_for_exact_ism_of_a_nonlinear_network():
    # The plain form, where both terms are random; the forms' algebra is checked above.
    params = f32({"w1": RNG.normal(size=(D, 8)), "w2": RNG.normal(size=(8, D)), "b": -0.3})
    batch = {"x": jnp.asarray(X, jnp.float32)}
    exact, _ = jax.jit(make_ism_loss(tanh_score))(params, None, batch)
    sliced = make_sliced_loss(tanh_score, 64, "rademacher", variance_reduction=False)
    keys = jax.random.split(jax.random.PRNGKey(1), 128)
    est = jax.jit(jax.vmap(lambda k: sliced(params, k, batch)[0]))(keys)
    mean, se = float(jnp.mean(est)), float(jnp.std(est)) / np.sqrt(len(keys))
    # 128 * 64 projections per sample; 4 standard errors leave a 1e-4 chance of a false alarm.
    assert se > 0
    assert abs(mean - float(exact)) < 4 * se + 1e-5, (mean, float(exact), se)


def test_dsm_and_ncsn_match_float64_reference_with_their_noise():
    sigma, rng = 0.4, jax.random.PRNGKey(5)
    got = run(make_dsm_loss(linear_score, sigma), rng=5)
    eps = np.asarray(jax.random.normal(rng, X.shape), np.float64)
    sig = np.full(B, sigma)
    ref = 0.5 * np.mean(np.sum((sigma * np_score(X + sigma * eps, sig) + eps) ** 2, -1))
    assert got == pytest.approx(ref, rel=1e-5)

    ladder = geometric_sigmas(5.0, 0.05, 7)
    np.testing.assert_allclose(ladder, 5.0 * 0.1 ** (np.arange(7) / 3), rtol=1e-6)
    got = run(make_ncsn_loss(linear_score, ladder), rng=5)
    k_idx, k_eps = jax.random.split(rng)
    sig = np.asarray(ladder, np.float64)[np.asarray(jax.random.randint(k_idx, (B,), 0, 7))]
    eps = np.asarray(jax.random.normal(k_eps, X.shape), np.float64)
    xt = X + sig[:, None] * eps
    ref = 0.5 * np.mean(np.sum((sig[:, None] * np_score(xt, sig) + eps) ** 2, -1))
    assert got == pytest.approx(ref, rel=1e-5)


def test_continuous_dsm_matches_float64_reference():
    sde, rng = VPSDE(), jax.random.PRNGKey(7)
    got = run(make_sde_loss(linear_score, sde, eps_t=1e-3), rng=7)
    k_t, k_z = jax.random.split(rng)
    t = np.asarray(jax.random.uniform(k_t, (B,), jnp.float32, 1e-3, 1.0), np.float64)
    z = np.asarray(jax.random.normal(k_z, X.shape), np.float64)
    alpha = np.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
    std = np.sqrt(1 - alpha**2)[:, None]
    s = np_score(alpha[:, None] * X + std * z, t)
    assert got == pytest.approx(0.5 * np.mean(np.sum((std * s + z) ** 2, -1)), rel=1e-4)


@pytest.mark.parametrize(
    "factory",
    [
        lambda fn, e: make_esm_loss(fn, lambda x: -x, energy=e, sigma=0.2),
        lambda fn, e: make_ism_loss(fn, energy=e),
        lambda fn, e: make_sliced_loss(fn, 3, variance_reduction=False, energy=e),
        lambda fn, e: make_dsm_loss(fn, 0.3, energy=e),
        lambda fn, e: make_ncsn_loss(fn, geometric_sigmas(1.0, 0.1, 4), energy=e),
        lambda fn, e: make_sde_loss(fn, VPSDE(), energy=e),
    ],
    ids=["esm", "ism", "sliced", "dsm", "ncsn", "sde"],
)
def test_energy_parameterisation_equals_score_of_minus_grad_energy(factory):
    q, r = np.random.default_rng(1).normal(size=(2, D))
    e_params = f32({"P": P, "q": q, "r": r})
    s_params = f32({"A": -P, "b": -q, "w": -r})
    batch, key = {"x": jnp.asarray(X, jnp.float32)}, jax.random.PRNGKey(2)
    by_energy = factory(quadratic_energy, True)(e_params, key, batch)[0]
    by_score = factory(linear_score, False)(s_params, key, batch)[0]
    assert float(by_energy) == pytest.approx(float(by_score), rel=1e-5)


MIX = toy.gaussian_mixture([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], [0.5, 0.7, 0.4], [0.5, 0.3, 0.2])


def test_mixture_score_is_the_gradient_of_log_prob():
    mixes = (MIX, toy.ring(3, 3.0, 0.3))  # same shapes: one compilation

    @jax.jit
    def check(mix, x, sigma):
        auto = jax.grad(lambda y: jnp.sum(mix.log_prob(y, sigma)))(x)
        return mix.score(x, sigma), auto

    x = jnp.asarray(2.0 * np.random.default_rng(2).normal(size=(64, 2)), jnp.float32)
    for mix in mixes:
        # Per-sample noise levels from 0 (the clean mixture) to 1.
        np.testing.assert_allclose(*check(mix, x, jnp.linspace(0.0, 1.0, 64)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_mixture_density_integrates_to_one(sigma):
    g = np.linspace(-9.0, 9.0, 481)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    dens = np.exp(np.asarray(MIX.log_prob(pts, sigma), np.float64)).reshape(xx.shape)
    total = np.trapezoid(np.trapezoid(dens, g, axis=1), g)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_mixture_samples_follow_weights_and_noise():
    x = MIX.sample(jax.random.PRNGKey(4), 40000, sigma=0.5)
    mean = np.asarray(MIX.weights) @ np.asarray(MIX.means)
    np.testing.assert_allclose(np.mean(np.asarray(x), 0), mean, atol=0.04)
    # Variance of the noised mixture: sum_k w_k (std_k^2 + sigma^2 + |m_k|^2 per dim) - mean^2.
    w, m, s = np.asarray(MIX.weights), np.asarray(MIX.means), np.asarray(MIX.stds)
    var = w @ (s[:, None] ** 2 + 0.25 + m**2) - mean**2
    np.testing.assert_allclose(np.var(np.asarray(x), 0), var, rtol=0.03)


def mixture_draws(rng, shape, sigma=0.0):
    """Draws from MIX noised by sigma, in numpy (keeps XLA compilation out of the data)."""
    m, sd, w = (np.asarray(v, np.float64) for v in MIX)
    comp = rng.choice(len(w), shape, p=w)
    noise = rng.normal(size=shape + (m.shape[1],))
    return (m[comp] + np.sqrt(sd[comp] ** 2 + sigma**2)[..., None] * noise).astype(np.float32)


@functools.cache
def mlp_and_params():
    model = ScoreMLP(features=32, depth=2)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones((2, 2)), jnp.ones(2))


@pytest.mark.parametrize("objective", ["esm", "dsm", "sliced"])
def test_short_training_reduces_score_error(objective):
    sigma, steps, batch = (0.1 if objective == "dsm" else 0.0), 300, 256
    model, params = mlp_and_params()
    loss_fn = {
        "esm": lambda: make_esm_loss(model.apply, MIX.score),
        "dsm": lambda: make_dsm_loss(model.apply, sigma),
        "sliced": lambda: make_sliced_loss(model.apply, 1),
    }[objective]()
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
    rng = np.random.default_rng(1)
    data = mixture_draws(rng, (steps, batch))  # fresh clean data every step
    x_eval = jnp.asarray(mixture_draws(rng, (2000,), sigma))
    c_eval = jnp.full((2000,), sigma)
    target = MIX.score(x_eval, sigma)

    @jax.jit
    def train(params, key):
        def step(carry, inp):
            params, state = carry
            x, i = inp
            grads = jax.grad(lambda p: loss_fn(p, jax.random.fold_in(key, i), {"x": x})[0])(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        xs = (jnp.asarray(data), jnp.arange(steps))
        return jax.lax.scan(step, (params, opt.init(params)), xs)[0][0]

    mse = jax.jit(lambda p: jnp.mean(sq_norm(model.apply(p, x_eval, c_eval) - target)))
    before = float(mse(params))
    after = float(mse(train(params, jax.random.PRNGKey(1))))
    # Measured on these seeds: 77x (esm), 10x (dsm: its target -eps/sigma is noisy), 45x (sliced).
    assert after < before / 4, (objective, before, after)
