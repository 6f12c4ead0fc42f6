"""Latent diffusion: stage 1 (the autoencoder), then diffusion on its scaled latents.

The scale factor 1 / std(latents) is computed from the training set's encodings (posterior
means) and kept in every stage-2 checkpoint's metadata with the stage-1 folder, so sampling
decodes with exactly the autoencoder and scale the UNet was trained against.
"""

import os

import jax
import ml_collections
import numpy as np

from jldm.build.autoencoder import build_autoencoder
from jldm.sampling.run import Stage1, encode
from jldm.train.autoencoder import load_stage1, stage1_task
from jldm.train.diffusion import diffusion_task
from jldm.train.fit import Result, fit


def stage1_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """stage1.workdir (an existing stage-1 run), or WORKDIR/stage1 where this run trains it."""
    given = config.stage1.workdir
    return os.path.abspath(os.path.expanduser(given)) if given else os.path.join(workdir, "stage1")


def fit_latent(
    config: ml_collections.ConfigDict, workdir: str, data: tuple[np.ndarray, np.ndarray]
) -> Result:
    """Both stages in workdir on data = (images [N,H,W,C] in [-1, 1], labels [N]); stage 1 is
    skipped when stage1.workdir names a finished run."""
    images, labels = data
    folder = stage1_folder(config, workdir)
    if config.stage1.workdir:
        params = load_stage1(config, folder)
    else:
        os.makedirs(folder, exist_ok=True)
        first = fit(stage1_task(config, folder, images, labels), folder)
        if not first.complete:
            return first
        params = jax.device_get(first.state.params["ae"])
    ae = build_autoencoder(config)
    latents = encode(Stage1(ae, params, 1.0), images)
    scale = float(1.0 / latents.std())
    if jax.process_index() == 0:
        print(f"stage 1: {folder}; latents {latents.shape[1:]}, scale factor {scale:.4f}")
    stage1 = Stage1(ae, params, scale)
    meta = {"latent_scale": scale, "stage1": folder}
    task = diffusion_task(config, workdir, (latents * scale, labels), stage1, meta)
    return fit(task, workdir)
