"""The notebook face of jldm: train, load, generate, encode, decode, bits_per_dim, load_pretrained.

import jldm
jldm.train(config, "runs/digits")              # the same loop as train.py
run = jldm.load("runs/digits")                   # config, model, EMA params, stage 1
images = jldm.generate(run, labels=[3, 3, 7])    # [3, H, W, C] floats in [0, 1]
bpd = jldm.bits_per_dim(run, test_u8)            # [N], SDE objectives and VAEs
z = jldm.api.encode(run, images, labels=[3, 3, 7])  # VAE: posterior means; LDM: scaled latents
x = jldm.api.decode(run, z, labels=[3, 3, 7])    # back to images in [0, 1]
sd = jldm.load_pretrained("stable-diffusion-v1-5")  # a run like any other
images = jldm.generate(sd, prompts=["a red bicycle"], steps=30, sampler="dpmpp2m")
"""

import jax
import ml_collections
import numpy as np

from jldm.build.vae import is_vae
from jldm.errors import UserError
from jldm.runs.load import Loaded, Stage1, load_run
from jldm.sampling import pipeline, vae
from jldm.sampling import run as run_space
from jldm.sampling.likelihood import bits_per_dim as ode_bits_per_dim
from jldm.sampling.pipeline import Generator
from jldm.sampling.run import conditions, encode_images
from jldm.sampling.vae_likelihood import vae_bits_per_dim


def train(
    config: ml_collections.ConfigDict, workdir: str, *, force: bool = False, writer=None
) -> bool:
    """Train config in workdir (resuming), as train.py does. -> True when complete.

    force: reuse a workdir holding a run of another architecture, moving that run whole into
    WORKDIR/replaced-TIMESTAMP (a run folder jldm.load reads). writer: your own metric writer
    (write_scalars, write_images, write_hparams, flush, close: a clu MetricWriter or a
    jldm.train.writers.Writer) instead of config.train.writer's; flushed, not closed.
    """
    # Imported here: loading and sampling a run never import the training code.
    from jldm.train.entry import train as train_run

    return train_run(config, workdir, force, writer)


def load(workdir: str, step: int | None = None, *, ema: bool = True) -> Loaded:
    """A trained run from its Orbax checkpoints: step None is the latest readable one."""
    return load_run(workdir, step, ema)


def generate(run: Loaded, **options) -> np.ndarray:
    """Samples of a trained run -> images [N, H, W, C] in [0, 1] (uint8=True: 8-bit).

    Diffusion runs (and load_pretrained's): labels or prompts, negative_prompts, sampler, steps,
    guidance, eta, seed, known, low_res, size (see jldm.sampling.pipeline.generate). VAE runs:
    decodes of z ~ N(0, I) for labels (or num, for an unconditional VAE), seed, temperature
    (see jldm.sampling.vae.generate).
    """
    if is_vae(run.config):
        return vae.generate(run, **options)
    return pipeline.generate(run, **options)


def make_generator(run: Loaded, cond: np.ndarray, **options) -> Generator:
    """The compiled-on-demand sampler gen(key) -> images for conditions cond (class ids [N] or
    token ids [N, L]); options as generate's. A VAE run takes only temperature."""
    if is_vae(run.config):
        extra = sorted(set(options) - {"temperature"})
        if extra:
            raise UserError(f"a VAE run samples its prior in one decoder pass: drop {extra}")
        t = options.get("temperature", run.config.sample.temperature)
        return vae.prior_generator(run, cond, num=len(cond), temperature=t)
    return pipeline.make_generator(run, cond, **options)


def bits_per_dim(run: Loaded, images_u8: np.ndarray, **options):
    """Bits/dim [N] of 8-bit images [N, H, W, C] at the run's resolution, uniformly dequantised.

    SDE runs: under the probability-flow ODE (options: labels, seed, steps, tol, batch_size,
    with_nfe; see jldm.sampling.likelihood). VAE runs: the importance-weighted bound with
    K = samples (default vae.iwae_samples; options: labels, seed, samples, with_nfe, which
    adds the decoder passes per image); jldm.sampling.vae_likelihood.vae_bits_per_dim also
    gives the negative ELBO's.
    """
    if not is_vae(run.config):
        return ode_bits_per_dim(run, images_u8, **options)
    with_nfe = options.pop("with_nfe", False)
    out = vae_bits_per_dim(run, images_u8, **options)
    if with_nfe:
        return out["iwae"], np.full(out["iwae"].shape, out["decoder_evals"])
    return out["iwae"]


def _latent_run(run: Loaded, what: str) -> Stage1:
    if run.stage1 is None:
        raise UserError(f"{what} needs a VAE or latent-diffusion run: this run works on pixels")
    return run.stage1


def encode(run: Loaded, images01: np.ndarray, *, labels=None) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] -> latents: a VAE's posterior means [N, latent_size]
    (labels [N] for a conditional VAE), or a latent run's scaled latents [N, h, w, c]."""
    if is_vae(run.config):
        return vae.encode(run, images01, labels)
    _latent_run(run, "encode")
    return encode_images(run, np.asarray(images01, np.float32) * 2.0 - 1.0)


def decode(run: Loaded, latents: np.ndarray, *, labels=None) -> np.ndarray:
    """Latents (as encode returns them) -> images [N, H, W, C] in [0, 1]."""
    if is_vae(run.config):
        return vae.decode(run, latents, labels)
    stage1 = _latent_run(run, "decode")
    fn = jax.jit(lambda p, z: run_space.decode(stage1, p, z))
    return np.clip(
        np.asarray(fn(stage1.params, np.asarray(latents, np.float32))) / 2.0 + 0.5, 0.0, 1.0
    )


def load_pretrained(root: str, *, cache: str | bool = True, dtype=None) -> Loaded:
    """A diffusers Stable Diffusion folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) as
    a run: generate(run, prompts=[...]) samples it like a trained text-conditional LDM.

    cache: where the converted Orbax checkpoint is kept (True: a folder per model in jldm's
    cache folder, see jldm.cache; False: convert every time); dtype: the compute dtype (None:
    bfloat16 on GPU/TPU, float32 on CPU).
    """
    from jldm.runs.pretrained import load_pretrained_run

    return load_pretrained_run(root, cache=cache, dtype=dtype)


def text_to_image(run: Loaded, prompts: list[str], **options) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] for prompts from a load_pretrained run.

    options: negative_prompts, steps, guidance, sampler, seed, height, width, num_per_prompt,
    eta (see jldm.sampling.pretrained.generate_text_to_image).
    """
    from jldm.sampling.pretrained import generate_text_to_image

    return generate_text_to_image(run, prompts, **options)


__all__ = [
    "Generator",
    "Loaded",
    "Stage1",
    "bits_per_dim",
    "conditions",
    "decode",
    "encode",
    "encode_images",
    "generate",
    "load",
    "load_pretrained",
    "make_generator",
    "text_to_image",
    "train",
]
