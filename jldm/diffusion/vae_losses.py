"""VAE and latent-diffusion autoencoder objectives: pure functions on arrays, no modules.

Two families:
- the VAE ELBO, E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), with a Gaussian or Bernoulli
  likelihood and L Monte Carlo samples of z = mean + std * eps (the importance-weighted bound
  that tightens it is in vae_bounds);
- the LDM autoencoder loss: L1/L2 reconstruction + perceptual distance + kl_weight * KL, plus
  a PatchGAN term whose weight adapts to the gradients at the decoder's last layer and is zero
  before a start step; and the discriminator's hinge loss.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Params = Any
# features(x [B,H,W,C]) -> list of feature maps [B,h_l,w_l,C_l]
FeatureFn = Callable[[jax.Array], Sequence[jax.Array]]

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_but_batch(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats. mean, logvar: [B, ...] -> [B]."""
    return 0.5 * _sum_but_batch(jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0)


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(x; mean, exp(logvar) I). x, mean: [B, ...], logvar broadcastable -> [B]."""
    logvar = jnp.broadcast_to(logvar, x.shape)
    return -0.5 * _sum_but_batch(jnp.square(x - mean) * jnp.exp(-logvar) + logvar + _LOG_2PI)


def bernoulli_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
    """log Bernoulli(x; sigmoid(logits)) = -cross-entropy. x in [0, 1]: [B, ...] -> [B]."""
    # x * log p + (1 - x) * log(1 - p), written with softplus so large |logits| stay finite.
    return _sum_but_batch(x * logits - jax.nn.softplus(logits))


# encode_fn(params, x [B,...], *cond) -> (mean, logvar) of q(z|x), each [B, ...z].
EncodeFn = Callable[..., tuple[jax.Array, jax.Array]]
# decode_fn(params, z [N, ...z], *cond) -> [N, ...x], or (mean, logvar) for a Gaussian whose
# variance the decoder emits.
DecodeFn = Callable[..., jax.Array | tuple[jax.Array, jax.Array]]


def check_likelihood(likelihood: str, num_samples: int) -> None:
    """ValueError for an unknown likelihood or fewer than one sample."""
    if likelihood not in ("gaussian", "bernoulli"):
        raise ValueError(f"likelihood={likelihood!r}: use gaussian or bernoulli")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")


def posterior_draws(
    encode_fn: EncodeFn, params: Params, key: jax.Array, x: jax.Array, cond: tuple, num_samples: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean, logvar) of q(z|x) [B,...z] and z = mean + std * eps, [K, B, ...z]."""
    mean, logvar = encode_fn(params, x, *cond)
    eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
    return mean, logvar, mean[None] + jnp.exp(0.5 * logvar)[None] * eps


def draw_log_likelihoods(
    decode_fn: DecodeFn,
    likelihood: str,
    obs_logvar: float | Callable[[Params], jax.Array],
    params: Params,
    x: jax.Array,
    z: jax.Array,
    cond: tuple,
) -> jax.Array:
    """log p(x|z) for every draw: x [B,...], z [K,B,...z] -> [K, B]."""
    k, b = z.shape[:2]
    flat = z.reshape(k * b, *z.shape[2:])
    # Draw-major order: row i * B + j is draw i of example j, so conditions repeat as a block.
    reps = tuple(jnp.tile(c, (k,) + (1,) * (c.ndim - 1)) for c in cond)
    out = decode_fn(params, flat, *reps)
    xs = jnp.broadcast_to(x[None], (k, *x.shape)).reshape(k * b, *x.shape[1:])
    if likelihood == "bernoulli":
        ll = bernoulli_log_likelihood(xs, out)
    elif isinstance(out, tuple):
        ll = gaussian_log_likelihood(xs, *out)
    else:
        lv = obs_logvar(params) if callable(obs_logvar) else jnp.asarray(obs_logvar)
        ll = gaussian_log_likelihood(xs, out, lv)
    return ll.reshape(k, b)


def make_elbo_loss(
    encode_fn: EncodeFn,
    decode_fn: DecodeFn,
    likelihood: str = "gaussian",
    num_samples: int = 1,
    obs_logvar: float | Callable[[Params], jax.Array] = 0.0,
    kl_weight: float | Callable[[dict], jax.Array] = 1.0,
    conditional: bool = False,
) -> Callable:
    """Negative ELBO in nats per example, averaged over the batch.

    encode_fn(params, x [B,...]) -> (mean, logvar) of q(z|x), each [B, ...z];
    decode_fn(params, z [N, ...z]) -> [N, ...x]: the mean of p(x|z) for "gaussian" (or a tuple
    (mean, logvar) when the decoder emits the variance), its logits for "bernoulli" (then
    batch["image"] must lie in [0, 1]).
    obs_logvar: the Gaussian likelihood's log-variance when the decoder does not emit it, fixed
    (a float; 0 gives 0.5 * squared error + const) or learned (a function of params returning
    an array broadcastable to x).
    kl_weight: the KL's weight in the loss, a float or a function of the batch (a warm-up reads
    batch["step"]); the reported ELBO always weighs it 1.
    conditional: both networks also take batch["label"] ([B], repeated per draw for decode_fn).
    Returns loss_fn(params, rng, batch) -> (loss, metrics), batch = {"image": [B, ...]}; the
    metrics hold the ELBO, E_q[log p(x|z)] (num_samples-sample average), the KL and its weight.
    """
    check_likelihood(likelihood, num_samples)

    def loss_fn(params: Params, rng: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        x = batch["image"]
        cond = (batch["label"],) if conditional else ()
        mean, logvar, z = posterior_draws(encode_fn, params, rng, x, cond, num_samples)
        ll = jnp.mean(
            draw_log_likelihoods(decode_fn, likelihood, obs_logvar, params, x, z, cond), axis=0
        )
        kl = gaussian_kl(mean, logvar)
        w = kl_weight(batch) if callable(kl_weight) else kl_weight
        elbo = ll - kl
        loss = -jnp.mean(ll - w * kl)
        return loss, {
            "loss": loss,
            "elbo": jnp.mean(elbo),
            "log_likelihood": jnp.mean(ll),
            "kl": jnp.mean(kl),
            "kl_weight": jnp.asarray(w, jnp.float32),
        }

    return loss_fn


def reconstruction_loss(x: jax.Array, recon: jax.Array, kind: str = "l1") -> jax.Array:
    """Sum over pixels of |x - recon| (l1) or (x - recon)^2 (l2). x, recon: [B, ...] -> [B]."""
    diff = x - recon
    if kind == "l1":
        return _sum_but_batch(jnp.abs(diff))
    if kind == "l2":
        return _sum_but_batch(jnp.square(diff))
    raise ValueError(f"reconstruction kind={kind!r}: use l1 or l2")


def _unit_channels(f: jax.Array, eps: float) -> jax.Array:
    # eps inside the root too: ReLU features are often all zero at a pixel, where the
    # derivative of sqrt is infinite and the gradient would be NaN.
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    return f / (jnp.sqrt(sq + eps * eps) + eps)


def perceptual_distance(
    features: FeatureFn,
    x: jax.Array,
    y: jax.Array,
    layer_weights: Sequence[jax.Array] | None = None,
    eps: float = 1e-10,
) -> jax.Array:
    """LPIPS-style distance. x, y: [B,H,W,C] -> [B].

    Per layer l: features unit-normalised along channels, squared difference, optionally
    weighted per channel by layer_weights[l] ([C_l], LPIPS's learned linear layer), summed over
    channels, averaged over space; then summed over layers.
    """
    fx, fy = features(x), features(y)
    if layer_weights is not None and len(layer_weights) != len(fx):
        raise ValueError(f"{len(layer_weights)} layer weights for {len(fx)} feature maps")
    total = jnp.zeros(x.shape[0], jnp.float32)
    for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
        d = jnp.square(_unit_channels(a, eps) - _unit_channels(b, eps))
        if layer_weights is not None:
            d = d * layer_weights[i]
        total = total + jnp.mean(jnp.sum(d, axis=-1), axis=(1, 2))
    return total


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec))). Logits: any shape -> scalar."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
    """-mean D(x_rec): the decoder is pushed toward patches the discriminator calls real."""
    return -jnp.mean(logits_fake)


def adaptive_weight(
    rec_grad: jax.Array, gan_grad: jax.Array, max_weight: float = 1e4, eps: float = 1e-4
) -> jax.Array:
    """|grad rec| / (|grad gan| + eps), clipped to [0, max_weight], no gradient. -> scalar.

    Both gradients are taken at the decoder's last layer, so the adversarial term is scaled to
    move that layer about as much as the reconstruction term does.
    """
    w = jnp.linalg.norm(rec_grad.ravel()) / (jnp.linalg.norm(gan_grad.ravel()) + eps)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def adversarial_factor(step: jax.Array | int, disc_start: int) -> jax.Array:
    """1.0 once step >= disc_start, else 0.0: the GAN terms are off while the AE warms up."""
    return jnp.where(jnp.asarray(step) >= disc_start, 1.0, 0.0)


def _replace(tree: Any, path: Sequence[str], value: jax.Array) -> Any:
    if not path:
        return value
    head, *rest = path
    if head not in tree:
        raise KeyError(f"last_layer path element {head!r} not in params (has {sorted(tree)})")
    return {**tree, head: _replace(tree[head], rest, value)}


def _get(tree: Any, path: Sequence[str]) -> jax.Array:
    for key in path:
        if key not in tree:
            raise KeyError(f"last_layer path element {key!r} not in params (has {sorted(tree)})")
        tree = tree[key]
    return tree


def make_autoencoder_loss(
    ae_apply: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    disc_apply: Callable[[Params, jax.Array], jax.Array],
    rec_kind: str = "l1",
    kl_weight: float = 1e-6,
    perceptual_weight: float = 1.0,
    features: FeatureFn | None = None,
    layer_weights: Sequence[jax.Array] | None = None,
    disc_weight: float = 0.5,
    disc_start: int = 50001,
    last_layer: Sequence[str] = ("decoder", "conv_out", "kernel"),
) -> tuple[Callable, Callable]:
    """The LDM autoencoder's two objectives (defaults: the SD KL-f8 autoencoder's config).

    ae_apply(params, x [B,H,W,C], key) -> (recon [B,H,W,C], mean, logvar) with z sampled by key;
    disc_apply(disc_params, x) -> patch logits. Per example, rec = sum over pixels of the
    L1/L2 error + perceptual_weight * H*W*C * perceptual distance (the distance counted at
    every pixel, as in taming's LPIPSWithDiscriminator, so kl_weight keeps its meaning).

    Returns (generator_loss_fn, discriminator_loss_fn):
      generator_loss_fn(params, disc_params, rng, batch, step) -> (loss, metrics), loss =
        mean rec + kl_weight * mean KL + disc_weight * w_adapt * [step >= disc_start] * g_loss;
      discriminator_loss_fn(disc_params, params, rng, batch, step) -> (loss, metrics), the
        hinge loss on real images and (stopped-gradient) reconstructions, 0 before disc_start.
    Pass the same rng to both in one step so they see the same reconstructions.
    """
    if perceptual_weight > 0 and features is None:
        raise ValueError("perceptual_weight > 0 needs a features function")
    last_layer = tuple(last_layer)

    def rec_terms(x: jax.Array, recon: jax.Array) -> jax.Array:
        rec = reconstruction_loss(x, recon, rec_kind)
        if perceptual_weight > 0:
            p = perceptual_distance(features, x, recon, layer_weights)
            rec = rec + perceptual_weight * math.prod(x.shape[1:]) * p
        return rec

    def generator_loss_fn(params, disc_params, rng, batch, step) -> tuple[jax.Array, dict]:
        x = batch["image"]

        def terms(kernel):
            recon, mean, logvar = ae_apply(_replace(params, last_layer, kernel), x, rng)
            nll = jnp.mean(rec_terms(x, recon))
            g = generator_adversarial_loss(disc_apply(disc_params, recon))
            return (nll, g), jnp.mean(gaussian_kl(mean, logvar))

        (nll, g), pullback, kl = jax.vjp(terms, _get(params, last_layer), has_aux=True)
        one, zero = jnp.ones_like(nll), jnp.zeros_like(g)
        (rec_grad,) = pullback((one, zero))
        (gan_grad,) = pullback((zero, one))
        d_weight = disc_weight * adaptive_weight(rec_grad, gan_grad)
        factor = adversarial_factor(step, disc_start)
        loss = nll + kl_weight * kl + d_weight * factor * g
        metrics = {"loss": loss, "rec": nll, "kl": kl, "g_loss": g, "d_weight": d_weight}
        return loss, metrics

    def discriminator_loss_fn(disc_params, params, rng, batch, step) -> tuple[jax.Array, dict]:
        x = batch["image"]
        recon = jax.lax.stop_gradient(ae_apply(params, x, rng)[0])
        real, fake = disc_apply(disc_params, x), disc_apply(disc_params, recon)
        loss = adversarial_factor(step, disc_start) * hinge_discriminator_loss(real, fake)
        metrics = {"d_loss": loss, "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}
        return loss, metrics

    return generator_loss_fn, discriminator_loss_fn
