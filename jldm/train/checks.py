"""Checks of a training config that need no data and write nothing: its structure, the sizes
of its batches, and the sampler its grids are drawn with."""

import contextlib
import os
import traceback
from collections.abc import Iterator

import ml_collections

from jldm.build.noise import unread_keys
from jldm.errors import UserError
from jldm.runs.kinds import kind_of

# The sections every run's config has (a latent run's also stage1, a VAE's vae).
SECTIONS = ("data", "model", "diffusion", "train", "sample")


def check_structure(config) -> None:
    """config is a ConfigDict holding every section a run reads."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict: make "
            "get_config() return one (ml_collections.ConfigDict(...) of it)"
        )
    for name in SECTIONS:
        if not isinstance(config.get(name), ml_collections.ConfigDict):
            what = "has no" if name not in config else "has a value instead of a"
            raise UserError(
                f"the config {what} {name!r} section: add config.{name} = "
                "ml_collections.ConfigDict() with its keys (configs/default.py lists them)"
            )


def check_overrides(config, overridden: dict) -> None:
    """--config.PATH=VALUE overrides (overridden: PATH -> VALUE) that config's run would not
    read are refused: a value that changes nothing is a mistake to name, not to train with."""
    unread = unread_keys(config.diffusion)
    for path, value in overridden.items():
        section, _, key = path.partition(".")
        if section == "diffusion" and key in unread:
            raise UserError(
                f"--config.{path}={value} would change nothing: {unread[key]}; drop the flag "
                "or set the objective or schedule that reads it"
            )


def missing_key(e: BaseException) -> str | None:
    """The key of a ConfigDict lookup that failed with e, else None (another error)."""
    if not isinstance(e, AttributeError | KeyError):
        return None
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or os.path.join("ml_collections", "config_dict") not in frames[-1].filename:
        return None
    return str(e).strip("\"'")


@contextlib.contextmanager
def config_keys() -> Iterator[None]:
    """A config key the code reads but the config lacks, as a UserError naming it."""
    try:
        yield
    except (AttributeError, KeyError) as e:
        key = missing_key(e)
        if key is None:
            raise
        raise UserError(
            f"the config has no key {key!r} that this run reads: add it (configs/default.py "
            "lists every key with its default)"
        ) from None


def check_sizes(config: ml_collections.ConfigDict, unet: dict | None = None) -> None:
    """The training batches fit in memory (unet: the diffusion UNet's settings)."""
    from jldm.build.memory import check_batch_fits

    d, t = config.data, config.train
    pixels = (d.resolution, d.resolution, d.channels)
    k = t.get("steps_per_call", 1)
    if unet is None:
        check_batch_fits("train", t.batch_size, pixels, None, k)
        return
    from jldm.build.model import model_shape

    if kind_of(config) == "latent":
        check_batch_fits("stage1", config.stage1.batch_size, pixels)
    res, ch = model_shape(config)
    check_batch_fits("train", t.batch_size, (res, res, ch), unet, k)


def check_sampling(config: ml_collections.ConfigDict) -> None:
    """The sampler and step count of the run's sample grids (config.sample), before training."""
    from jldm.build import objectives, samplers

    sampler = samplers.get(config.sample.sampler)
    samplers.check_sampler(objectives.REGISTRY[config.diffusion.objective], sampler.name)
    samplers.check_steps(sampler, config, sampler.default_steps(config), "sample.steps")


# What a training run writes in its workdir: files, and folders.
RUN_FILES = ("config.json", "lock", "metrics.jsonl")
RUN_FOLDERS = ("tb", "samples")


def check_run_files(workdir: str) -> None:
    """The files and folders a run writes are not the other kind in workdir (before anything
    is written: a folder named metrics.jsonl would fail only after config.json)."""
    from jldm.data.paths import isdir, isfile, join

    for name in RUN_FILES:
        if isdir(join(workdir, name)):
            raise UserError(
                f"{join(workdir, name)} is a folder where the run keeps its {name} file: move it "
                "away and rerun"
            )
    for name in RUN_FOLDERS:
        if isfile(join(workdir, name)):
            raise UserError(
                f"{join(workdir, name)} is a file where the run keeps its {name} folder: move it "
                "away and rerun"
            )


def check_free_space(workdir: str, shapes) -> None:
    """Refuse a local workdir whose filesystem has no room for one checkpoint: at least half
    the bytes of the state (shapes: the abstract TrainState; Orbax compresses, but trained
    float32 weights and moments by far less than half)."""
    import math
    import shutil

    import jax
    import numpy as np

    from jldm.data.paths import is_local

    if not is_local(workdir):
        return
    probe = os.path.abspath(workdir)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    leaves = jax.tree_util.tree_leaves(shapes)
    need = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves) // 2
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"{workdir} has {free / 2**20:.2f} MiB free, less than one checkpoint of this model "
            f"takes (at least {need / 2**20:.2f} MiB): free some space or pick another folder"
        )


@contextlib.contextmanager
def faults_in(workdir: str) -> Iterator[None]:
    """An OSError that names no path (a write to an open file on a full disk) names workdir,
    where the run writes."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.filename2 is None:
            e.filename = workdir
        raise


@contextlib.contextmanager
def new_workdir(workdir: str) -> Iterator[None]:
    """A local workdir this run creates is removed again when a fault (Ctrl-C, a full disk)
    stops the run before its first checkpoint: an interrupted start leaves nothing behind. (A
    run that diverges keeps its folder, whose logs tell why.)"""
    import shutil

    from jldm.data.paths import is_local
    from jldm.train.saves import CheckpointNotWritten

    created = is_local(workdir) and not os.path.lexists(workdir)
    try:
        yield
    except (KeyboardInterrupt, OSError, CheckpointNotWritten):
        checkpoints = os.path.join(workdir, "checkpoints")
        if created and not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
