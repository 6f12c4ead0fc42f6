"""Importing pretrained weights: diffusers Stable Diffusion folders (UNet, VAE, CLIP text
encoder, scheduler) into jldm's Flax modules, cached as Orbax checkpoints."""

from jldm.convert.models import (
    convert_text_encoder,
    convert_unet,
    convert_vae,
    text_encoder_from_config,
    unet_from_config,
    vae_from_config,
)
from jldm.convert.pipeline import Pretrained, convert_folder, load_pretrained
from jldm.convert.scheduler import (
    SchedulerSpec,
    inference_pairs,
    inference_timesteps,
    scheduler_from_config,
)

__all__ = [
    "Pretrained",
    "SchedulerSpec",
    "convert_folder",
    "convert_text_encoder",
    "convert_unet",
    "convert_vae",
    "inference_pairs",
    "inference_timesteps",
    "load_pretrained",
    "scheduler_from_config",
    "text_encoder_from_config",
    "unet_from_config",
    "vae_from_config",
]
