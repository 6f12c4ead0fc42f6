"""Bits/dim of images under a trained VAE: the negative ELBO and the importance-weighted bound.

The convention is the diffusion runs' (jldm.sampling.likelihood): 8-bit images at the model's
resolution, uniformly dequantised, the density's bits per dimension of the dequantised data
plus the bin width, an upper bound on the bits/dim of the discrete pixels. A Gaussian VAE
models pixels on [0, 1], so the bin is 1/256 there (log2 256 = 8 bits a dimension added); on
[-1, 1] both the density and the bin scale by 2, and the bits/dim are the same number.
A Bernoulli VAE trained on binarised pixels gives the bits/dim of the binarised test split
(pixels drawn with P(1) = value / 255 under the seed): a figure of other data, marked "binary".
A class-conditional VAE is scored unconditionally, as the diffusion runs are: p(x) is
marginalised over uniform classes, log p(x) = log mean_y p(x|y), each class with its own bound.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jldm.build.ranges import check_seed
from jldm.build.vae import LEVELS, build_bounds, is_conditional, make_targets
from jldm.diffusion.likelihood import bits_per_dim
from jldm.diffusion.vae_bounds import log_mean_exp
from jldm.errors import UserError
from jldm.runs.load import Loaded

# Decoder evaluations per jitted call (images x samples): bounds the activations' memory.
DECODES_PER_CALL = 2048


def eval_pixels(
    config: ml_collections.ConfigDict, num: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first num (None: all) test images at the model's resolution as 8-bit values
    [N,R,R,C] uint8, and their labels [N]: the images every run's bits/dim are measured on."""
    from jldm.data import load_split, preprocess, to_unit
    from jldm.data.datasets import dataset_of, reference_split

    d = config.data
    test = load_split(dataset_of(d), reference_split(d.name))
    x01 = to_unit(preprocess(test.images[:num], d.resolution))
    return np.round(x01 * 255.0).astype(np.uint8), test.labels[:num]


def has_density(config: ml_collections.ConfigDict) -> bool:
    """The VAE defines a density (or mass) of its data: Gaussian, or Bernoulli on binary pixels."""
    return config.model.likelihood == "gaussian" or config.vae.binarize


def data_kind(config: ml_collections.ConfigDict) -> str:
    """What the VAE's bits/dim are of: "8-bit" (dequantised) or "binary" (binarised) pixels."""
    if config.model.likelihood == "gaussian":
        return "8-bit"
    if has_density(config):
        return "binary"
    raise UserError(
        "a Bernoulli VAE on [0, 1] intensities defines no density of the pixels: train with "
        "--config.vae.binarize=True or --config.model.likelihood=gaussian for bits/dim"
    )


def _to_bits(config: ml_collections.ConfigDict, nats: jax.Array) -> jax.Array:
    d = config.data
    dims = d.resolution * d.resolution * d.channels
    if data_kind(config) == "8-bit":
        return bits_per_dim(nats, dims, LEVELS, 0.0, 1.0)
    return -nats / (dims * math.log(2.0))


def make_likelihood(config: ml_collections.ConfigDict, model, samples: int):
    """score(params, pixels [N,R,R,C] uint8, labels [N] or None, seed) -> (elbo, iwae), each
    [N] bits/dim, from `samples` posterior draws per image (and class, when marginalised).

    Built once, compiled once per chunk shape: what the training loop's evaluation reuses.
    """
    data_kind(config)  # refuses a model without a density
    bounds = build_bounds(config, model, samples)
    targets = make_targets(config)
    classes = config.data.num_classes

    @jax.jit
    def chunk(params, key, pixels, y):
        k_data, k_z = jax.random.split(key)
        x = targets(k_data, pixels)
        if y is not None or not is_conditional(config):
            e, i = bounds(params, k_z, x, y)
        else:

            def one(c):
                return bounds(params, jax.random.fold_in(k_z, c), x, jnp.full(x.shape[:1], c))

            e, i = jax.lax.map(one, jnp.arange(classes))
            e, i = log_mean_exp(e, 0), log_mean_exp(i, 0)
        return _to_bits(config, e), _to_bits(config, i)

    def score(params, pixels, labels=None, seed: int = 0):
        pixels = np.asarray(pixels)
        n = len(pixels)
        batch = max(1, min(DECODES_PER_CALL // samples, n))
        key = jax.random.PRNGKey(check_seed(seed))
        out = []
        for start in range(0, n, batch):
            pix = pixels[start : start + batch]
            pad = batch - len(pix)  # one compiled shape for every chunk
            pix = np.concatenate([pix, np.zeros((pad, *pix.shape[1:]), pix.dtype)])
            y = None
            if labels is not None:
                y = np.asarray(labels[start : start + batch], np.int32)
                y = np.concatenate([y, np.zeros((pad,), np.int32)])
            e, i = chunk(params, jax.random.fold_in(key, start), pix, y)
            out.append((np.asarray(e)[: batch - pad], np.asarray(i)[: batch - pad]))
        return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))

    return score


def vae_bits_per_dim(
    run: Loaded,
    images_u8: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
    samples: int | None = None,
) -> dict:
    """Bits/dim of 8-bit images [N,H,W,C] under the VAE run.

    -> {"elbo": [N] negative-ELBO bits/dim, "iwae": [N] importance-weighted bound with K =
    samples (None: config.vae.iwae_samples), "samples": K, "data": "8-bit" or "binary",
    "decoder_evals": decoder passes per image}. labels None scores p(x) (marginalised over the
    classes for a conditional run); labels [N] score p(x|y).
    """
    config = run.config
    d = config.data
    images_u8 = np.asarray(images_u8)
    if images_u8.shape[1:] != (d.resolution, d.resolution, d.channels):
        raise UserError(
            f"images of shape {images_u8.shape[1:]} do not match the run's "
            f"{(d.resolution, d.resolution, d.channels)}: render them at data.resolution"
        )
    k = config.vae.iwae_samples if samples is None else samples
    if k < 1:
        raise UserError(f"samples={k} must be >= 1")
    score = make_likelihood(config, run.model, k)
    elbo, iwae = score(run.params, images_u8, labels, seed)
    marginal = labels is None and is_conditional(config)
    return {
        "elbo": elbo,
        "iwae": iwae,
        "samples": k,
        "data": data_kind(config),
        "decoder_evals": k * (d.num_classes if marginal else 1),
    }
