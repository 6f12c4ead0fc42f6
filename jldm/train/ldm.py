"""Latent diffusion: stage 1 (the autoencoder), then diffusion on its scaled latents.

The scale factor 1 / std(latents) is computed from the training set's encodings (posterior
means) and kept in every stage-2 checkpoint's metadata with the stage-1 folder, so sampling
decodes with exactly the autoencoder and scale the UNet was trained against.
"""

import os

import jax
import ml_collections
import numpy as np

from jldm.train import autoencoder
from jldm.train.config_io import write_config


def stage1_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """stage1.workdir (an existing stage-1 run), or WORKDIR/stage1 where this run trains it."""
    given = config.stage1.workdir
    return os.path.abspath(os.path.expanduser(given)) if given else os.path.join(workdir, "stage1")


def encode(config: ml_collections.ConfigDict, params, images: np.ndarray, batch: int = 256):
    """Posterior means of images [N,H,W,C] in [-1, 1]. -> float32 [N, H/f, W/f, latent]."""
    ae = autoencoder.build_autoencoder(config)
    fn = jax.jit(lambda x: ae.apply({"params": params}, x, method=ae.encode).mean)
    return np.concatenate(
        [np.asarray(fn(images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def run(config: ml_collections.ConfigDict, workdir: str, force: bool = False) -> bool:
    """Both stages in workdir (stage 1 skipped when stage1.workdir names a finished run)."""
    from jldm.train import loop

    images, labels = loop.load_training_images(config)
    if jax.process_index() == 0:
        write_config(workdir, config, force)
    folder = stage1_folder(config, workdir)
    if config.stage1.workdir:
        params = autoencoder.load(config, folder)
    else:
        params = autoencoder.train(config, folder, images, labels)
    latents = encode(config, params, images)
    scale = float(1.0 / latents.std())
    if jax.process_index() == 0:
        print(f"stage 1: {folder}; latents {latents.shape[1:]}, scale factor {scale:.4f}")
    meta = {"latent_scale": scale, "stage1": folder}
    return loop.run(config, workdir, force, data=(latents * scale, labels), meta=meta)
