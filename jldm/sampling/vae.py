"""A trained VAE run as a generative model: prior samples, encode/decode, reconstructions,
latent interpolations, and the sample.py command's outputs for a VAE run.

Images are floats in [0, 1] (the mean of p(x|z): the Gaussian mean clipped, or the Bernoulli
probabilities), as jldm.generate returns them for diffusion runs. Samples of a class-conditional
VAE need labels; an unconditional one takes num (or uses labels only for their count).
"""

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from jldm.build.ranges import check_seed
from jldm.build.vae import image_mean, is_conditional, networks
from jldm.data.datasets import dataset_of, has_quality
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.sampling.pipeline import Generator
from jldm.sampling.run import class_ids
from jldm.sampling.vae_likelihood import eval_pixels

logger = logging.getLogger(__name__)

_BATCH = 256


def _labels(run: Loaded, labels, num: int | None) -> np.ndarray:
    """Class ids [N] checked against the run (an unconditional run: zeros, for their count)."""
    c = run.config.data.num_classes
    if labels is None:
        if is_conditional(run.config):
            raise UserError(f"this VAE is class-conditional: pass labels (class ids 0..{c - 1})")
        if num is None or num < 1:
            raise UserError("pass num >= 1 (or labels) for samples of an unconditional VAE")
        return np.zeros((num,), np.int32)
    return class_ids(labels, c)


def prior_generator(
    run: Loaded, labels=None, *, num: int | None = None, temperature: float = 1.0
) -> Generator:
    """gen(key) -> images [N,H,W,C] in [0, 1] decoded from z ~ N(0, temperature^2 I).

    gen.fn(params, labels, key, inputs) is jitted, so gen.fn.lower(*gen.args(key)).compile()
    times the compilation apart from sampling, as for the diffusion samplers.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise UserError(f"temperature={temperature} must be a finite number > 0")
    config, model = run.config, run.model
    _, decode_fn = networks(config, model)
    y = jnp.asarray(_labels(run, labels, num))

    def draw(params, y, key, inputs):
        z = temperature * jax.random.normal(key, (y.shape[0], config.model.latent_size))
        return image_mean(config, decode_fn(params, z, y))

    return Generator(jax.jit(draw), run.params, y, {})


def generate(
    run: Loaded,
    *,
    labels=None,
    num: int | None = None,
    seed: int = 0,
    temperature: float | None = None,
    uint8: bool = False,
) -> np.ndarray:
    """Prior samples -> images [N,H,W,C] in [0, 1] (uint8=True: 8-bit). temperature: the prior's
    scale (None: the run's config.sample.temperature)."""
    t = run.config.sample.temperature if temperature is None else temperature
    gen = prior_generator(run, labels, num=num, temperature=t)
    images = np.asarray(gen(jax.random.PRNGKey(check_seed(seed))))
    if not np.isfinite(images).all():
        raise UserError("the VAE decoded non-finite samples: the run may have diverged")
    return np.round(images * 255.0).astype(np.uint8) if uint8 else images


def _batched(fn, params, *arrays) -> np.ndarray:
    n = len(arrays[0])
    parts = [fn(params, *(a[i : i + _BATCH] for a in arrays)) for i in range(0, n, _BATCH)]
    return np.concatenate([np.asarray(p) for p in parts])


def encode(run: Loaded, images01: np.ndarray, labels=None) -> np.ndarray:
    """Images [N,H,W,C] in [0, 1] -> posterior means of q(z|x[, y]): [N, latent_size]."""
    config = run.config
    d = config.data
    images = np.asarray(images01, np.float32)
    if images.shape[1:] != (d.resolution, d.resolution, d.channels):
        raise UserError(
            f"images of shape {images.shape[1:]} do not match the run's "
            f"{(d.resolution, d.resolution, d.channels)}: render them at data.resolution"
        )
    encode_fn, _ = networks(config, run.model)
    y = _labels(run, labels, len(images))
    return _batched(jax.jit(lambda p, x, y: encode_fn(p, x, y)[0]), run.params, images, y)


def decode(run: Loaded, latents: np.ndarray, labels=None) -> np.ndarray:
    """Latents [N, latent_size] -> images [N,H,W,C] in [0, 1], the mean of p(x|z[, y])."""
    config = run.config
    _, decode_fn = networks(config, run.model)
    z = np.asarray(latents, np.float32)
    if z.ndim != 2 or z.shape[1] != config.model.latent_size:
        raise UserError(
            f"latents of shape {z.shape}: expected [N, {config.model.latent_size}] "
            "(model.latent_size)"
        )
    y = _labels(run, labels, len(z))
    fn = jax.jit(lambda p, z, y: image_mean(config, decode_fn(p, z, y)))
    return _batched(fn, run.params, z, y)


def reconstruct(run: Loaded, images01: np.ndarray, labels=None) -> np.ndarray:
    """decode(encode(x)) at the posterior mean: [N,H,W,C] in [0, 1] -> same."""
    return decode(run, encode(run, images01, labels), labels)


def interpolate(
    run: Loaded, a01: np.ndarray, b01: np.ndarray, labels=None, steps: int = 8
) -> np.ndarray:
    """Decodes of (1 - t) z_a + t z_b, t = 0..1 in `steps`, between the posterior means of
    images a01, b01 [R,H,W,C] (same class under labels [R]) -> [R, steps, H, W, C]."""
    if steps < 2:
        raise UserError(f"interpolation steps={steps} must be >= 2")
    za, zb = encode(run, a01, labels), encode(run, b01, labels)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    z = ((1.0 - t) * za[:, None] + t * zb[:, None]).reshape(-1, za.shape[1])
    y = None if labels is None else np.repeat(np.asarray(labels, np.int32), steps)
    out = decode(run, z, y)
    return out.reshape(len(za), steps, *out.shape[1:])


def interpolation_pairs(run: Loaded, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b [R,H,W,C] in [0, 1], labels [R]) from the test split: for a conditional run the
    first two test images of class r % num_classes, else test images 2r and 2r + 1."""
    pixels, labels = eval_pixels(run.config, None)
    images = pixels.astype(np.float32) / 255.0
    if not is_conditional(run.config):
        return images[0 : 2 * rows : 2], images[1 : 2 * rows : 2], labels[:rows] * 0
    c = run.config.data.num_classes
    pick = [np.flatnonzero(labels == r % c)[: 2 * (r // c + 1)][-2:] for r in range(rows)]
    if any(len(p) < 2 for p in pick):
        raise UserError("the test split has fewer than two images of some class to interpolate")
    idx = np.asarray(pick)
    return images[idx[:, 0]], images[idx[:, 1]], labels[idx[:, 0]]


def _refuse(unused: dict) -> None:
    for flag, value in unused.items():
        if value not in (None, False, [], ""):
            raise UserError(
                f"--{flag} does not apply to a VAE run (one decoder pass from the prior): drop it"
            )


def sample_vae_run(
    run: Loaded,
    out: str,
    *,
    labels: np.ndarray,
    per_class: int,
    seed: int = 0,
    metrics: bool = True,
    unused: dict | None = None,
) -> list[str]:
    """sample.py for a VAE run: writes OUT.png (prior samples, per_class to a row) and OUT.npz
    (images [N,H,W,C] in [0, 1], labels [N]), OUT_recon.png (test images, each row followed by
    its reconstructions) and OUT_interp.png (rows: image a, interpolations, image b); prints
    a summary and, for the digits and Fashion-MNIST, the quality figures. OUT may be a cloud
    prefix (gs://...): each file is then one object. unused: flag -> value of sample.py flags
    that a VAE run refuses when set. -> the written paths."""
    from jldm.eval import save_grid
    from jldm.sampling.shards import save_npz
    from jldm.temporaries import together

    _refuse(unused or {})
    config = run.config
    s, d = config.sample, config.data
    cond = is_conditional(config)
    t0 = time.perf_counter()
    images = generate(run, labels=labels if cond else None, num=len(labels), seed=seed)
    seconds = time.perf_counter() - t0
    with together():  # a grid and its .npz are replaced both or neither
        paths = [save_grid(images, out + ".png", ncols=per_class), out + ".npz"]
        save_npz(paths[1], images=images, labels=labels if cond else np.full(len(images), -1))

    pixels, test_labels = eval_pixels(config, 2 * per_class)
    x = pixels.astype(np.float32) / 255.0
    recon = reconstruct(run, x, test_labels if cond else None)
    k = min(per_class, len(x))
    rows = [part for i in range(0, len(x), k) for part in (x[i : i + k], recon[i : i + k])]
    paths.append(save_grid(np.concatenate(rows), out + "_recon.png", ncols=k))

    a, b, pair_labels = interpolation_pairs(run, s.interpolation_rows)
    path = interpolate(run, a, b, pair_labels if cond else None, s.interpolation_steps)
    grid = np.concatenate([a[:, None], path, b[:, None]], axis=1)
    paths.append(save_grid(grid.reshape(-1, *grid.shape[2:]), out + "_interp.png", grid.shape[1]))
    logger.info(
        f"step {run.step}: {len(images)} prior samples (1 decoder pass each), "
        f"{seconds:.1f} s incl. compile"
    )
    if metrics and has_quality(d.name):
        from jldm.eval import sample_quality

        q = sample_quality(images, labels if cond else None, dataset_of(d))
        logger.info("quality: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items() if v is not None))
    logger.info("samples: " + " ".join(paths))
    return paths
