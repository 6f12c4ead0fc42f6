"""Config -> the VAE of a `vae` config: its network, likelihood, data targets, loss and bounds.

A VAE config has a `vae` section (its objective's settings) and a `model` section describing
the ConvVAE, its prior (model.prior: standard N(0, I), or class, learned per class) and its
likelihood p(x|z): model.likelihood gaussian (mean from the decoder;
model.obs_var fixed at model.obs_logvar, or learned: a log-variance per pixel from the
decoder) or bernoulli (logits). Pixels are modelled on [0, 1]: a Gaussian VAE sees the 8-bit
pixels uniformly dequantised (so its density is comparable with the diffusion runs' bits/dim),
a Bernoulli VAE sees them binarised (vae.binarize) or as intensities in [0, 1].
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build.state import TrainState, abstract_state, make_optimizer
from jldm.diffusion.likelihood import dequantize
from jldm.diffusion.vae_bounds import make_bounds
from jldm.diffusion.vae_losses import make_elbo_loss
from jldm.errors import UserError
from jldm.nn.vae import ConvVAE
from jldm.runs.kinds import kind_of

LEVELS = 256  # 8-bit pixels
# Dequantised data spread uniformly over a pixel bin of width 1/256 on [0, 1]: no variance
# below the uniform's, 1/(12 * 256^2), ever fits better, and the floor keeps a learned variance
# from collapsing on pixels that are constant in the training set (the digits' borders).
MIN_LOGVAR = math.log(1.0 / (12.0 * LEVELS**2))

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_CHOICES = {
    "model.likelihood": ("gaussian", "bernoulli"),
    "model.obs_var": ("fixed", "learned"),
    "model.conditioning": ("class", "none"),
    "model.prior": ("standard", "class"),
    "model.dtype": tuple(_DTYPES),
}
# What a setting means where a saved config predates it.
_ABSENT = {"model.prior": "standard"}


def is_vae(config: ml_collections.ConfigDict) -> bool:
    """A VAE config: trained by the ELBO, sampled from its prior (no diffusion)."""
    return kind_of(config) == "vae"


def is_conditional(config: ml_collections.ConfigDict) -> bool:
    """Both networks see the class label (q(z|x, y), p(x|z, y))."""
    return config.model.conditioning == "class"


def learned_variance(config: ml_collections.ConfigDict) -> bool:
    """A Gaussian likelihood whose per-pixel log-variance the decoder emits."""
    m = config.model
    return m.likelihood == "gaussian" and m.obs_var == "learned"


def class_prior(config: ml_collections.ConfigDict) -> bool:
    """The prior p(z|y) is learned per class (model.prior=class) instead of N(0, I)."""
    return config.model.get("prior", _ABSENT["model.prior"]) == "class"


def check_config(config: ml_collections.ConfigDict) -> None:
    """The settings of a VAE config that ranges.check_config cannot judge alone."""
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = config[section].get(name, _ABSENT.get(key))
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not known: use one of {', '.join(allowed)}")
    if class_prior(config) and not is_conditional(config):
        raise UserError(
            "model.prior=class needs model.conditioning=class: an unconditional VAE has no "
            "class to learn a prior for; set --config.model.prior=standard"
        )
    if config.diffusion.objective != "vae":
        raise UserError(
            f"diffusion.objective={config.diffusion.objective!r} in a VAE config: a config with "
            "a vae section trains the VAE; drop --config.diffusion.objective"
        )
    binarize = config.vae.binarize
    if not isinstance(binarize, bool):
        raise UserError(f"vae.binarize={binarize!r} must be True or False")
    if binarize and config.model.likelihood != "bernoulli":
        raise UserError(
            "vae.binarize=True needs model.likelihood=bernoulli: binary pixels have no density "
            "under a Gaussian; set --config.vae.binarize=False"
        )
    m, res = config.model, config.data.resolution
    f = 2 ** len(m.channel_mult)
    if res % f:
        raise UserError(
            f"data.resolution={res} is not divisible by the VAE's downsampling {f} "
            f"(2^len(model.channel_mult)): pick a multiple of it or shorten model.channel_mult"
        )


def build_vae(config: ml_collections.ConfigDict) -> ConvVAE:
    """The ConvVAE of config.model for config.data's shape (2C outputs for learned variance)."""
    check_config(config)
    m, d = config.model, config.data
    return ConvVAE(
        latent_size=m.latent_size,
        out_channels=d.channels * (2 if learned_variance(config) else 1),
        resolution=d.resolution,
        channels=m.channels,
        channel_mult=tuple(m.channel_mult),
        hidden=m.hidden,
        num_classes=d.num_classes if is_conditional(config) else 0,
        class_prior=class_prior(config),
        dtype=_DTYPES[m.dtype],
    )


def init_vae(model: ConvVAE, config: ml_collections.ConfigDict, key: jax.Array):
    """Fresh params of model for config.data's image shape."""
    d = config.data
    x = jnp.zeros((1, d.resolution, d.resolution, d.channels), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.int32))["params"]


def vae_state_shapes(config: ml_collections.ConfigDict, model: ConvVAE) -> TrainState:
    """Shapes and dtypes of the VAE's TrainState, without allocating it."""
    init = lambda k: init_vae(model, config, k)
    return abstract_state(init, make_optimizer(config.train), config.seed)


def networks(config: ml_collections.ConfigDict, model: ConvVAE) -> tuple[Callable, Callable]:
    """(encode_fn(params, x, y) -> (mean, logvar) [B, latent], decode_fn(params, z, y)).

    decode_fn gives what the likelihood reads: Bernoulli logits, a Gaussian mean, or (mean,
    logvar) with the log-variance floored at MIN_LOGVAR. x: [B,R,R,C] in [0, 1]; y: [B].
    """
    cond = is_conditional(config)
    label = lambda y: y if cond else None

    def encode_fn(params, x, y=None):
        return model.apply({"params": params}, x, label(y), method=model.encode)

    def decode_fn(params, z, y=None):
        out = model.apply({"params": params}, z, label(y), method=model.decode)
        if not learned_variance(config):
            return out
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, MIN_LOGVAR + jax.nn.softplus(raw - MIN_LOGVAR)

    return encode_fn, decode_fn


def image_mean(config: ml_collections.ConfigDict, out) -> jax.Array:
    """The mean of p(x|z) on [0, 1] from decode_fn's output: [B,R,R,C], clipped."""
    if config.model.likelihood == "bernoulli":
        return jax.nn.sigmoid(out)
    mean = out[0] if isinstance(out, tuple) else out
    return jnp.clip(mean, 0.0, 1.0)


def make_targets(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """targets(key, pixels [B,...] in 0..255) -> what the VAE models, float32 on [0, 1]:
    dequantised (Gaussian), binarised with P(1) = pixel / 255 (vae.binarize) or intensities."""
    if config.model.likelihood == "gaussian":
        return lambda key, pixels: dequantize(key, pixels, LEVELS, 0.0, 1.0)
    if config.vae.binarize:
        return lambda key, pixels: jax.random.bernoulli(
            key, pixels.astype(jnp.float32) / (LEVELS - 1)
        ).astype(jnp.float32)
    return lambda key, pixels: pixels.astype(jnp.float32) / (LEVELS - 1)


def _obs_logvar(config: ml_collections.ConfigDict) -> float:
    return float(config.model.obs_logvar)


def kl_weight(config: ml_collections.ConfigDict) -> Callable[[dict], jax.Array] | float:
    """The KL's weight: rising linearly from 0 to 1 over vae.kl_warmup_steps (0: always 1)."""
    warmup = config.vae.kl_warmup_steps
    if warmup == 0:
        return 1.0
    return lambda batch: jnp.minimum(1.0, batch["step"].astype(jnp.float32) / warmup)


def build_elbo_loss(config: ml_collections.ConfigDict, model: ConvVAE) -> Callable:
    """loss_fn(params, rng, batch) -> (negative ELBO per example, metrics).

    batch: {"image": 8-bit pixel values [B,R,R,C], "label": [B], "step": []}; the step's key
    draws the dequantisation (or binarisation) noise and the vae.num_samples posterior draws.
    """
    encode_fn, decode_fn = networks(config, model)
    elbo = make_elbo_loss(
        encode_fn,
        decode_fn,
        config.model.likelihood,
        config.vae.num_samples,
        obs_logvar=_obs_logvar(config),
        kl_weight=kl_weight(config),
        conditional=is_conditional(config),
    )
    targets = make_targets(config)

    def loss_fn(params, rng: jax.Array, batch: dict):
        k_data, k_z = jax.random.split(rng)
        return elbo(params, k_z, dict(batch, image=targets(k_data, batch["image"])))

    return loss_fn


def build_bounds(config: ml_collections.ConfigDict, model: ConvVAE, samples: int) -> Callable:
    """bounds(params, key, x [B,...] targets on [0, 1], y [B]) -> (elbo, iwae) [B] in nats."""
    encode_fn, decode_fn = networks(config, model)
    bounds = make_bounds(
        encode_fn, decode_fn, config.model.likelihood, samples, obs_logvar=_obs_logvar(config)
    )
    if is_conditional(config):
        return bounds
    return lambda params, key, x, y=None: bounds(params, key, x)
