"""A pretrained Stable Diffusion folder as a run: the same record (jldm.runs.load.Loaded) a
trained latent text-conditional run has, so it samples through the one sampling pipeline.

Its CLIP text encoder and UNet are one text-conditional model (pad tokens attended to, as SD
does), its VAE the stage 1, its scheduler_config.json the discrete schedule and the timestep
spacing every sampler walks (sample.timestep_spacing), its tokenizer/ folder the tokenizer.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build.noise import build_schedule
from jldm.configs.default import get_config
from jldm.convert.folder import component_dir
from jldm.convert.pipeline import Pretrained, load_pretrained
from jldm.nn.models import TextConditionalUNet
from jldm.runs.load import Loaded, Stage1

_OWN_FIELDS = ("parent", "name", "dtype", "out_channels")


def _fields(module) -> dict:
    """A Flax module's settings, without those the wrapper sets itself."""
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.name not in _OWN_FIELDS
    }


def token_length(pipe: Pretrained, tokenizer_max: int) -> int:
    """Tokens per prompt: the tokenizer's model_max_length, capped by the text encoder's."""
    limit = pipe.text_encoder.max_position_embeddings
    return limit if tokenizer_max <= 0 or tokenizer_max > limit else tokenizer_max


def pretrained_config(pipe: Pretrained, tokenizer_max: int = 0) -> ml_collections.ConfigDict:
    """The run config of a converted folder: a latent, text-conditional ddpm run."""
    from jldm.build.text import text_tokenizer

    c = get_config()
    sched, unet, vae = pipe.scheduler, pipe.unet, pipe.vae
    f = c.diffusion
    f.objective, f.prediction = "ddpm", sched.prediction
    f.timesteps = sched.num_train_timesteps
    # The folder's betas as they are: whatever its beta_schedule, they are the schedule.
    f.betas = [float(b) for b in sched.schedule.betas]
    c.data.name = "pretrained"
    c.data.resolution = unet.sample_size * vae.factor
    c.data.channels = vae.in_channels
    c.model.conditioning = "text"
    c.text.tokenizer = component_dir(pipe.root, "tokenizer")
    c.stage1 = ml_collections.ConfigDict(
        dict(
            workdir=pipe.root,
            channel_mult=tuple(vae.model.channel_mult),
            latent_channels=vae.latent_channels,
            scale=vae.scaling_factor,
        )
    )
    s = c.sample
    s.timestep_spacing, s.steps_offset = sched.timestep_spacing, sched.steps_offset
    s.set_alpha_to_one = sched.set_alpha_to_one
    s.sampler, s.steps, s.guidance = "ddim", 50, 7.5
    if not tokenizer_max:
        tokenizer_max = int(getattr(text_tokenizer(c).hf, "model_max_length", 0) or 0)
    c.text.max_length = token_length(pipe, tokenizer_max)
    assert 2 ** (len(vae.model.channel_mult) - 1) == vae.factor, "VAE factor"
    return c


def as_run(pipe: Pretrained) -> Loaded:
    """The converted folder as a run record; params {unet, text_encoder}, the VAE's in stage1."""
    text = pipe.text_encoder
    model = TextConditionalUNet(
        unet=_fields(pipe.unet.model),
        text=_fields(text),
        out_channels=pipe.unet.model.out_channels,
        mask_pads=False,
        dtype=pipe.unet.model.dtype,
    )
    params = {"unet": pipe.params["unet"], "text_encoder": pipe.params["text_encoder"]}
    stage1 = Stage1(pipe.vae.model, pipe.params["vae"], float(pipe.vae.scaling_factor))
    config = pretrained_config(pipe)
    return Loaded(config, model, params, build_schedule(config), 0, stage1)


def default_compute_dtype() -> jnp.dtype:
    """bfloat16 on GPU/TPU, float32 on CPU (where bfloat16 is slow and only emulated)."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu", "cuda", "rocm") else jnp.float32


def load_pretrained_run(root: str, *, cache: str | bool = True, dtype=None) -> Loaded:
    """A diffusers SD folder converted (or restored from its Orbax cache) as a run; dtype: the
    compute dtype (None: default_compute_dtype())."""
    return as_run(load_pretrained(root, cache=cache, dtype=dtype or default_compute_dtype()))
