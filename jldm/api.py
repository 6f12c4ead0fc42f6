"""The notebook face of jldm: train, load, generate, bits_per_dim, load_pretrained.

import jldm
jldm.train(config, "runs/digits")              # the same loop as train.py
run = jldm.load("runs/digits")                   # config, model, EMA params, stage 1
images = jldm.generate(run, labels=[3, 3, 7])    # [3, H, W, C] floats in [0, 1]
bpd = jldm.bits_per_dim(run, test_u8)            # [N], SDE objectives
sd = jldm.load_pretrained("stable-diffusion-v1-5")
images = jldm.text_to_image(sd, ["a red bicycle"], steps=30)
"""

from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from jldm.sampling.likelihood import bits_per_dim
from jldm.sampling.pipeline import Generator, generate, make_generator
from jldm.sampling.run import Loaded, Stage1, conditions, decode, encode_images
from jldm.train.entry import train as _train
from jldm.train.runs import load_run

if TYPE_CHECKING:
    from jldm.convert.pipeline import Pretrained


def train(config: ml_collections.ConfigDict, workdir: str, *, force: bool = False) -> bool:
    """Train config in workdir (resuming), as train.py does. -> True when complete.

    force: reuse a workdir holding a run of another architecture.
    """
    return _train(config, workdir, force)


def load(workdir: str, step: int | None = None, *, ema: bool = True) -> Loaded:
    """A trained run from its Orbax checkpoints: step None is the latest readable one."""
    return load_run(workdir, step, ema)


def load_pretrained(root: str, *, cache: str | bool = True, dtype=None) -> "Pretrained":
    """A diffusers Stable Diffusion folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/).

    cache: where the converted Orbax checkpoint is kept (True: a folder per model in jldm's
    cache folder, see jldm.cache; False: convert every time); dtype: the compute dtype (None:
    bfloat16 on GPU/TPU, float32 on CPU).
    """
    from jldm.sampling.pretrained import load

    return load(root, cache=cache, dtype=dtype)


def text_to_image(pipe: "Pretrained", prompts: list[str], **options) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] for prompts from a load_pretrained pipeline.

    options: negative_prompts, steps, guidance, sampler, seed, height, width, num_per_prompt,
    eta (see jldm.sampling.pretrained.generate_text_to_image).
    """
    from jldm.sampling.pretrained import generate_text_to_image

    return generate_text_to_image(pipe, prompts, **options)


__all__ = [
    "Generator",
    "Loaded",
    "Stage1",
    "bits_per_dim",
    "conditions",
    "decode",
    "encode_images",
    "generate",
    "load",
    "load_pretrained",
    "make_generator",
    "text_to_image",
    "train",
]
