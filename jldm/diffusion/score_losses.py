"""Score matching objectives as factories returning pure, jittable loss functions.

Every factory returns loss_fn(params, rng, batch) -> (loss, metrics) with batch = {"x": [B,...]}.
The network is apply_fn(params, x [B,...], c [B]) -> [B,...], c a noise level sigma or a time t;
with energy=True it returns an energy f [B] instead and the score is -grad_x f.

Scale, the same for all objectives: per sample, 0.5 * (squared norm summed over every non-batch
axis), then the mean over the batch. So ESM, DSM and the SDE loss are on one scale, and
ISM = ESM - 0.5 E|grad log p|^2 (a constant of the data): the two have the same gradients.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jldm.diffusion import weighting as weights
from jldm.diffusion.sde import SDE

ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
LossFn = Callable[[Any, jax.Array, dict], tuple[jax.Array, dict]]


def as_score(apply_fn: ApplyFn, energy: bool = False) -> ApplyFn:
    """score(params, x [B,...], c [B]) -> [B,...]: apply_fn, or -grad_x of its energy [B]."""
    if not energy:
        return apply_fn

    def score(params, x: jax.Array, c: jax.Array) -> jax.Array:
        # Samples do not interact, so the gradient of the batch sum is every sample's gradient.
        return -jax.grad(lambda y: jnp.sum(apply_fn(params, y, c)))(x)

    return score


def sq_norm(v: jax.Array) -> jax.Array:
    """Squared norm over all but the batch axis. v: [B,...] -> [B]."""
    return jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=-1)


def exact_trace(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(fn(x), tr(d fn / d x) per sample) for a per-sample map fn: [B,...] -> [B,...].

    Costs D forward-mode passes over the batch (D = prod of the non-batch shape): samples do not
    interact, so the tangent e_j given to every sample at once yields column j of each sample's
    Jacobian. (A Jacobian over the whole [B, D] input would cost B * D passes.)
    """
    b, dim = x.shape[0], math.prod(x.shape[1:])
    out, jvp_fn = jax.linearize(lambda y: fn(y.reshape(x.shape)).reshape(b, dim), x.reshape(b, -1))
    basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, b, dim))
    cols = jax.vmap(jvp_fn)(basis)  # [D, B, D]: cols[j, b] = J_b e_j
    return out.reshape(x.shape), jnp.einsum("jbj->b", cols)


def sample_probe(key: jax.Array, shape: tuple[int, ...], kind: str = "rademacher") -> jax.Array:
    """Probe vectors v with E[v v^T] = I: rademacher (+-1) or gaussian. -> float32 shape."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, jnp.float32)
    if kind == "gaussian":
        return jax.random.normal(key, shape)
    raise ValueError(f"unknown probe {kind!r}: use rademacher or gaussian")


def geometric_sigmas(sigma_max: float, sigma_min: float, num: int) -> jax.Array:
    """Noise ladder sigma_1 = sigma_max > ... > sigma_L = sigma_min, geometric. -> [L]."""
    return jnp.asarray(np.geomspace(sigma_max, sigma_min, num), jnp.float32)


def _cond(x: jax.Array, value) -> jax.Array:
    return jnp.full((x.shape[0],), value, x.dtype)


def make_esm_loss(
    apply_fn: ApplyFn,
    true_score: Callable[[jax.Array], jax.Array],
    energy: bool = False,
    sigma: float = 0.0,
) -> LossFn:
    """Explicit score matching 0.5 E|s(x) - grad log p(x)|^2 against a known true_score.

    true_score(x [B,...]) -> [B,...] must be the score of the density the batch is drawn from;
    sigma is only the conditioning value handed to the network.
    """
    score = as_score(apply_fn, energy)

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        del rng
        x = batch["x"]
        err = score(params, x, _cond(x, sigma)) - true_score(x)
        loss = 0.5 * jnp.mean(sq_norm(err))
        return loss, {"loss": loss}

    return loss_fn


def make_ism_loss(apply_fn: ApplyFn, energy: bool = False, sigma: float = 0.0) -> LossFn:
    """Implicit score matching E[0.5 |s(x)|^2 + tr(grad_x s(x))], trace exact (low dimension)."""
    score = as_score(apply_fn, energy)

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        del rng
        x = batch["x"]
        s, trace = exact_trace(lambda y: score(params, y, _cond(x, sigma)), x)
        loss = jnp.mean(0.5 * sq_norm(s) + trace)
        return loss, {"loss": loss, "trace": jnp.mean(trace)}

    return loss_fn


def make_sliced_loss(
    apply_fn: ApplyFn,
    n_projections: int = 1,
    probe: str = "rademacher",
    variance_reduction: bool = True,
    energy: bool = False,
    sigma: float = 0.0,
) -> LossFn:
    """Sliced score matching with n random projections v per sample, v^T (grad_x s) v by jvp.

    variance_reduction: 0.5 |s|^2 + mean_v v^T (grad_x s) v (SSM-VR); otherwise
    mean_v [v^T (grad_x s) v + 0.5 (v^T s)^2]. Both are unbiased for ISM since E[v v^T] = I.
    The probes are sample_probe(rng, (n_projections, B, ...), probe).
    """
    score = as_score(apply_fn, energy)

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x = batch["x"]
        v = sample_probe(rng, (n_projections,) + x.shape, probe)
        s, jvp_fn = jax.linearize(lambda y: score(params, y, _cond(x, sigma)), x)
        jv = jax.vmap(jvp_fn)(v)
        vjv = jnp.sum((v * jv).reshape(n_projections, x.shape[0], -1), axis=-1)  # [n, B]
        if variance_reduction:
            per = 0.5 * sq_norm(s) + jnp.mean(vjv, axis=0)
        else:
            vs = jnp.sum((v * s).reshape(n_projections, x.shape[0], -1), axis=-1)
            per = jnp.mean(vjv + 0.5 * jnp.square(vs), axis=0)
        loss = jnp.mean(per)
        return loss, {"loss": loss}

    return loss_fn


def _dsm(score, params, x, sigma, eps, cond) -> jax.Array:
    """Per-sample 0.5 sigma^2 |s(x + sigma eps, cond) + eps / sigma|^2. sigma: [B] -> [B]."""
    sig = sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))
    s = score(params, x + sig * eps, cond)
    return 0.5 * sq_norm(sig * s + eps)


def make_dsm_loss(apply_fn: ApplyFn, sigma: float, energy: bool = False) -> LossFn:
    """Denoising score matching at one noise level: 0.5 sigma^2 |s(x~, sigma) + eps / sigma|^2.

    x~ = x + sigma eps, eps = jax.random.normal(rng, x.shape).
    """
    score = as_score(apply_fn, energy)

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x = batch["x"]
        eps = jax.random.normal(rng, x.shape, x.dtype)
        sig = _cond(x, sigma)
        loss = jnp.mean(_dsm(score, params, x, sig, eps, sig))
        return loss, {"loss": loss}

    return loss_fn


def make_ncsn_loss(
    apply_fn: ApplyFn,
    sigmas: jax.Array,
    energy: bool = False,
    weighting: str = "default",
    gamma: float = 5.0,
) -> LossFn:
    """NCSN: DSM with sigma drawn uniformly from the ladder per sample, lambda(sigma) = sigma^2.

    weighting "min_snr" multiplies each sample by min(SNR, gamma) / SNR, SNR = 1 / sigma^2
    (jldm.diffusion.weighting). rng splits into (level index key, eps key); metrics add the
    mean sigma drawn.
    """
    _refuse_weighting(weighting, ("default", "min_snr"))
    sigmas = jnp.asarray(sigmas, jnp.float32)
    score = as_score(apply_fn, energy)

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x = batch["x"]
        k_idx, k_eps = jax.random.split(rng)
        sig = sigmas[jax.random.randint(k_idx, (x.shape[0],), 0, sigmas.shape[0])]
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        per = _dsm(score, params, x, sig, eps, sig)
        if weighting == "min_snr":
            per = per * weights.min_snr_factor("eps", jnp.ones_like(sig), sig, gamma)
        loss = jnp.mean(per)
        return loss, {"loss": loss, "sigma": jnp.mean(sig)}

    return loss_fn


def _refuse_weighting(weighting: str, allowed: tuple[str, ...]) -> None:
    if weighting not in allowed:
        raise ValueError(f"weighting {weighting!r} does not apply here: use {', '.join(allowed)}")


def make_sde_loss(
    apply_fn: ApplyFn,
    sde: SDE,
    eps_t: float = 1e-5,
    energy: bool = False,
    weighting: str = "default",
    gamma: float = 5.0,
) -> LossFn:
    """Continuous-time DSM: 0.5 std(t)^2 |s(x_t, t) + z / std(t)|^2, t ~ U(eps_t, T).

    x_t = alpha(t) x0 + std(t) z; rng splits into (t key, z key); the network gets c = t.
    weighting (jldm.diffusion.weighting): "min_snr" multiplies each sample by min(SNR, gamma) /
    SNR, SNR = alpha^2 / std^2; "likelihood" weighs by g(t)^2 instead of std(t)^2, with t drawn
    proportionally to g^2 / std^2 and every sample weighted by Z = int g^2 / std^2 dt, so the
    loss is 0.5 int_eps_t^T g^2 E|s - grad log p_0t|^2 dt: the negative ELBO of x_eps_t in nats
    per sample, less terms free of the model.
    """
    _refuse_weighting(weighting, weights.WEIGHTINGS)
    score = as_score(apply_fn, energy)
    norm = weights.likelihood_norm(sde, eps_t) if weighting == "likelihood" else 1.0

    def loss_fn(params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x = batch["x"]
        k_t, k_z = jax.random.split(rng)
        if weighting == "likelihood":
            t = weights.likelihood_times(sde, k_t, x.shape[0], eps_t).astype(x.dtype)
        else:
            t = jax.random.uniform(k_t, (x.shape[0],), x.dtype, eps_t, sde.T)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        mean, std = sde.marginal(x, t)
        s = score(params, mean + std * z, t)
        per = 0.5 * sq_norm(std * s + z)
        if weighting == "min_snr":
            per = per * weights.min_snr_factor("eps", *sde.mean_coef_std(t), gamma)
        loss = norm * jnp.mean(per)
        return loss, {"loss": loss}

    return loss_fn
