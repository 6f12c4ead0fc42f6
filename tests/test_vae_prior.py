"""The learned class prior of the VAE (model.prior=class): the module's standardised latent u
gives the KL, importance weights and prior draws of z under p(z|y) = N(mu_y, s_y^2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_vae
from jldm.build.vae import build_elbo_loss, build_vae, init_vae, networks
from jldm.diffusion.vae_bounds import make_bounds
from jldm.errors import UserError
from tests.tiny import apply_overrides

SMALL = {
    "data.resolution": 8,
    "model.latent_size": 3,
    "model.channels": 4,
    "model.channel_mult": (1,),
    "model.hidden": 16,
    "model.obs_var": "learned",
    "vae.kl_warmup_steps": 0,
}


def _config(**overrides):
    return apply_overrides(digits_vae.get_config(), {**SMALL, **overrides})


def _models_and_params():
    """(plain model, class-prior model, plain params, class-prior params with a set prior)."""
    plain, prior = build_vae(_config()), build_vae(_config(**{"model.prior": "class"}))
    params = init_vae(plain, _config(), jax.random.PRNGKey(0))
    # The same networks, so the two modules differ by the prior alone.
    with_prior = {**init_vae(prior, _config(), jax.random.PRNGKey(0)), **params}
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(10, 3)).astype(np.float32)
    logstd = rng.normal(scale=0.5, size=(10, 3)).astype(np.float32)
    with_prior["prior_mean"] = {"embedding": jnp.asarray(mu)}
    with_prior["prior_logstd"] = {"embedding": jnp.asarray(logstd)}
    return plain, prior, params, with_prior, mu, logstd


def test_a_fresh_class_prior_is_the_standard_normal():
    config = _config(**{"model.prior": "class"})
    params = init_vae(build_vae(config), config, jax.random.PRNGKey(0))
    assert not np.any(params["prior_mean"]["embedding"])
    assert not np.any(params["prior_logstd"]["embedding"])


def test_the_module_works_in_the_standardised_coordinates_of_the_class_prior():
    plain, prior, params, with_prior, mu, logstd = _models_and_params()
    x = jax.random.uniform(jax.random.PRNGKey(2), (4, 8, 8, 1))
    y = jnp.array([0, 3, 3, 9])
    m, lv = plain.apply({"params": params}, x, y, method=plain.encode)
    u_mean, u_logvar = prior.apply({"params": with_prior}, x, y, method=prior.encode)
    np.testing.assert_allclose(u_mean, (m - mu[y]) / np.exp(logstd[y]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(u_logvar, lv - 2 * logstd[y], rtol=1e-5, atol=1e-5)
    u = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
    z = mu[y] + np.exp(logstd[y]) * np.asarray(u)
    np.testing.assert_allclose(
        prior.apply({"params": with_prior}, u, y, method=prior.decode),
        plain.apply({"params": params}, jnp.asarray(z), y, method=plain.decode),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_loss_kl_is_the_closed_form_kl_to_the_class_prior_in_float64():
    _, prior, params, with_prior, mu, logstd = _models_and_params()
    config = _config(**{"model.prior": "class"})
    plain = build_vae(_config())
    x_u8 = np.random.default_rng(4).integers(0, 256, size=(4, 8, 8, 1))
    y = jnp.array([1, 2, 2, 7])
    loss_fn = build_elbo_loss(config, prior)
    batch = {"image": jnp.asarray(x_u8), "label": y, "step": jnp.asarray(0)}
    _, metrics = loss_fn(with_prior, jax.random.PRNGKey(5), batch)
    # The posterior in z, from the plain module with the same networks; the KL between two
    # diagonal Gaussians: 0.5 sum(log(s^2/v) + (v + (m - mu)^2) / s^2 - 1).
    x = jnp.asarray(x_u8 / 255.0, jnp.float32)
    m, lv = (
        np.asarray(a, np.float64)
        for a in plain.apply({"params": params}, x, y, method=plain.encode)
    )
    s2 = np.exp(2 * logstd[np.asarray(y)].astype(np.float64))
    d = m - mu[np.asarray(y)]
    kl = 0.5 * np.sum(np.log(s2) - lv + (np.exp(lv) + d**2) / s2 - 1, axis=1)
    # The loss sees dequantised pixels (within 1/256 of x), so compare loosely.
    np.testing.assert_allclose(float(metrics["kl"]), kl.mean(), rtol=2e-2)


def test_importance_weights_are_those_of_z_under_the_class_prior():
    _, prior, params, with_prior, mu, logstd = _models_and_params()
    config = _config(**{"model.prior": "class"})
    plain = build_vae(_config())
    x = jax.random.uniform(jax.random.PRNGKey(6), (3, 8, 8, 1))
    y = jnp.array([4, 5, 6])
    encode_fn, decode_fn = networks(config, prior)
    bounds = make_bounds(encode_fn, decode_fn, "gaussian", 5)
    elbo, iwae = bounds(with_prior, jax.random.PRNGKey(7), x, y)
    # The same draws by hand in z: z = m + sqrt(v) eps, log w = log p(x|z) + log p(z|y) - log q.
    m, lv = plain.apply({"params": params}, x, y, method=plain.encode)
    u_mean, u_logvar = prior.apply({"params": with_prior}, x, y, method=prior.encode)
    eps = jax.random.normal(jax.random.PRNGKey(7), (5, 3, 3))
    z = np.asarray(m)[None] + np.exp(0.5 * np.asarray(lv))[None] * np.asarray(eps)
    u = np.asarray(u_mean)[None] + np.exp(0.5 * np.asarray(u_logvar))[None] * np.asarray(eps)
    np.testing.assert_allclose(z, mu[np.asarray(y)] + np.exp(logstd[np.asarray(y)]) * u, atol=1e-4)

    def log_normal(a, mean, logvar):
        return -0.5 * np.sum((a - mean) ** 2 / np.exp(logvar) + logvar + math.log(2 * math.pi), -1)

    mean, logvar = networks(_config(), plain)[1](
        params, jnp.asarray(z.reshape(15, 3)), jnp.tile(y, 5)
    )
    ll = log_normal(
        np.tile(np.asarray(x).reshape(1, 3, -1), (5, 1, 1)),
        np.asarray(mean).reshape(5, 3, -1),
        np.asarray(logvar).reshape(5, 3, -1),
    )
    yy = np.asarray(y)
    log_w = (
        ll + log_normal(z, mu[yy], 2 * logstd[yy]) - log_normal(z, np.asarray(m), np.asarray(lv))
    )
    np.testing.assert_allclose(elbo, log_w.mean(0), rtol=1e-4, atol=1e-2)
    want = np.log(np.mean(np.exp(log_w - log_w.max(0)), 0)) + log_w.max(0)
    np.testing.assert_allclose(iwae, want, rtol=1e-4, atol=1e-2)


def test_a_class_prior_needs_a_class_conditional_vae():
    with pytest.raises(UserError, match="model.prior=class needs model.conditioning=class"):
        build_vae(_config(**{"model.prior": "class", "model.conditioning": "none"}))
    with pytest.raises(UserError, match="model.prior='labels' is not known"):
        build_vae(_config(**{"model.prior": "labels"}))


def test_a_saved_config_without_a_prior_setting_builds_the_standard_prior():
    config = _config()
    del config.model["prior"]
    params = init_vae(build_vae(config), config, jax.random.PRNGKey(0))
    assert "prior_mean" not in params
