"""Latent diffusion: stage 1 (the autoencoder), then diffusion on its scaled latents.

The training set is encoded once into WORKDIR/latents (jldm.data.latents: array_record shards of
each image's posterior mean and std, written in chunks so memory stays flat in the dataset
size) and streamed from there like any split: rows by (seed, step), this process's only, each
latent drawn z ~ q(z|x) afresh. The scale factor 1 / std(posterior means) is computed while
encoding and kept in every stage-2 checkpoint's metadata with the stage-1 folder, so sampling
decodes with exactly the autoencoder and scale the UNet was trained against.
"""

import logging
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jldm.build.autoencoder import build_autoencoder
from jldm.data.latents import LatentRecords, open_latents, write_latents
from jldm.data.paths import is_local, join, makedirs, resolve
from jldm.data.stream import Source
from jldm.errors import UserError
from jldm.runs import checkpoint
from jldm.runs.load import Stage1
from jldm.runs.stage1_state import load_stage1, stage1_folder
from jldm.train.autoencoder import stage1_task
from jldm.train.diffusion import diffusion_task
from jldm.train.fit import Result, fit
from jldm.train.inputs import as_source

logger = logging.getLogger(__name__)

# Images encoded per call: one compiled batch shape, and the most images in memory at once.
ENCODE_BATCH = 256


def latent_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """data.latent_dir, or WORKDIR/latents: where the encoded training set is kept."""
    folder = resolve(config.data.get("latent_dir", "") or join(workdir, "latents"))
    if not is_local(folder):
        raise UserError(
            f"the encoded training set would go to {folder}, but array_record shards are read "
            "from local files: set data.latent_dir to a folder on a local disk"
        )
    return folder


def _in_memory(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Every row of source: (images [N, ...], labels [N]); what training stage 1 needs."""
    parts = [
        source.rows(np.arange(i, min(len(source), i + 4096))) for i in range(0, len(source), 4096)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _encoded(stage1: Stage1, source: Source) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(mean, std [n, h, w, c], labels [n]) of q(z|x) for source's rows, ENCODE_BATCH at a time."""
    ae = stage1.model

    @jax.jit
    def moments(params, x):
        post = ae.apply({"params": params}, x, method=ae.encode)
        return post.mean, post.std

    for start in range(0, len(source), ENCODE_BATCH):
        idx = np.arange(start, min(len(source), start + ENCODE_BATCH))
        images, labels = source.rows(idx)
        x = np.zeros((ENCODE_BATCH, *images.shape[1:]), np.float32)
        x[: len(idx)] = images  # one compiled shape, the last batch padded
        mean, std = moments(stage1.params, x)
        yield np.asarray(mean)[: len(idx)], np.asarray(std)[: len(idx)], labels


def encoded_training_set(
    config: ml_collections.ConfigDict,
    workdir: str,
    source: Source,
    stage1: Stage1,
    stage1_step: int,
    stage1_dir: str,
) -> LatentRecords:
    """The training set's latents under stage1 (unscaled: stage1.scale is not used), encoded
    into latent_folder once and reused after; process 0 writes, every process reads."""
    d = config.data
    folder = latent_folder(config, workdir)
    made = {
        "stage1": stage1_dir,
        "stage1_step": int(stage1_step),
        "dataset": d.name,
        "split": "train",
        "resolution": d.resolution,
        "channels": d.channels,
        "images": len(source),
    }
    # Every process checks a finished set, so a mismatch stops them all; process 0 writes.
    latents = open_latents(folder, made)
    if latents is None and jax.process_index() == 0:
        logger.info(f"encoding {len(source)} training images into {folder}")
        try:
            write_latents(folder, _encoded(stage1, source), len(source), made)
        except (OSError, RuntimeError) as e:
            if not isinstance(e, OSError) and type(e) is not RuntimeError:
                raise  # jax's runtime errors subclass RuntimeError; array_record's writer's don't
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"cannot write the encoded training set into {folder} ({first}): free space "
                "there or set data.latent_dir to another local folder, and rerun"
            ) from e
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jldm latents written")
    if latents is None:
        latents = open_latents(folder, made)
    if latents is None:
        raise UserError(
            f"{folder} holds no finished latent set after process 0 wrote it: make the workdir "
            "a folder every process shares, or set data.latent_dir to one"
        )
    return latents


def _stage1_step(folder: str) -> int:
    return int(checkpoint.manager(folder, read_only=True).latest_step())


def fit_latent(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: Source | tuple[np.ndarray, np.ndarray],
    writer=None,
) -> Result:
    """Both stages in workdir on data, a source of (images [n,H,W,C] in [-1, 1], labels [n])
    rows (training_source) or those arrays in memory; stage 1 is skipped when stage1.workdir
    names a finished run. Training stage 1 takes the images in memory; the latents never are.
    writer: each stage's metric writer, as jldm.train.fit's."""
    source = as_source(data)
    latent_folder(config, workdir)  # refused before stage 1 trains
    folder = stage1_folder(config, workdir)
    if config.stage1.workdir:
        params = load_stage1(config, folder)
        step = _stage1_step(folder)
    else:
        makedirs(folder)
        arrays = data if isinstance(data, tuple) else _in_memory(source)
        first = fit(stage1_task(config, folder, *arrays), folder, writer)
        del arrays
        if not first.complete:
            return first
        params = jax.device_get(first.state.params["ae"])
        step = int(first.state.step)
    ae = build_autoencoder(config)
    latents = encoded_training_set(config, workdir, source, Stage1(ae, params, 1.0), step, folder)
    if jax.process_index() == 0:
        logger.info(
            f"stage 1: {folder}; latents {latents.shape} in {latents.folder}, "
            f"scale factor {latents.scale:.4f}"
        )
    stage1 = Stage1(ae, params, latents.scale)
    meta = {"latent_scale": latents.scale, "stage1": folder}
    return fit(diffusion_task(config, workdir, latents, stage1, meta), workdir, writer)
