"""The resolved config in WORKDIR/config.json: written by train, read by sample and load.

WORKDIR may be local or a cloud folder (jldm.data.paths): config.json is replaced atomically
either way (a renamed temporary file, one object upload).
"""

import json
import logging
import time

import ml_collections

from jldm.data.paths import isdir, isfile, join, makedirs, read_text, rename, write_text_atomic
from jldm.errors import UserError

logger = logging.getLogger(__name__)

# Sections that define what a checkpoint is; a workdir keeps them fixed across restarts.
_ARCHITECTURE = ("model", "diffusion", "data", "text", "stage1", "vae")
# Keys inside those sections that change how (or how long) steps run, not what a checkpoint holds.
_RUNTIME_ONLY = {
    "model.remat",
    "data.threads",
    "data.random_flip",
    # Where the same dataset and its latents are read from (a moved folder, another host).
    "data.data_dir",
    "data.latent_dir",
    *(f"stage1.{k}" for k in ("steps", "log_every", "checkpoint_every", "keep_checkpoints")),
    "stage1.skip_nonfinite",
    "stage1.max_skipped_fraction",
}


_ADDED_DEFAULTS = {"objective": "ddpm", "parameterization": "score"}


def config_path(workdir: str) -> str:
    return join(workdir, "config.json")


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was started with."""
    path = config_path(workdir)
    if not isfile(path):
        raise UserError(
            f"{workdir} holds no jldm run (no config.json): pass the --workdir given to train.py"
        )
    config = ml_collections.ConfigDict(json.loads(read_text(path)))
    # Runs written before score objectives existed are DDPM runs.
    for key, value in _ADDED_DEFAULTS.items():
        if key not in config.diffusion:
            config.diffusion[key] = value
    return config


def _plain(c: ml_collections.ConfigDict, keys) -> dict:
    return json.loads(json.dumps({k: c.to_dict()[k] for k in keys if k in c}))


def architecture_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """The architecture keys on which config differs from the run already in workdir."""
    if not isfile(config_path(workdir)):
        return []
    a, b = _plain(read_config(workdir), _ARCHITECTURE), _plain(config, _ARCHITECTURE)
    return sorted(
        f"{s}.{k}"
        for s in _ARCHITECTURE
        # Keys only one side has are settings added to jldm since that run started.
        for k in set(a.get(s, {})) & set(b.get(s, {}))
        if a[s][k] != b[s][k] and f"{s}.{k}" not in _RUNTIME_ONLY
    )


def check_config_change(workdir: str, config: ml_collections.ConfigDict, force: bool) -> None:
    """Refuse a workdir whose run has another architecture, unless force."""
    diff = architecture_changes(workdir, config)
    if diff and not force:
        raise UserError(
            f"{workdir} holds a run with a different {', '.join(diff[:4])}: use a new "
            "--workdir, or --force to overwrite its config"
        )


def write_config(workdir: str, config: ml_collections.ConfigDict, force: bool = False) -> None:
    """Save config; refuse a workdir whose run has another architecture unless force.

    With force, the old run's checkpoints are moved aside, never deleted.
    """
    check_config_change(workdir, config, force)
    old_ckpt = join(workdir, "checkpoints")
    if architecture_changes(workdir, config) and isdir(old_ckpt):
        kept = f"{old_ckpt}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        rename(old_ckpt, kept)
        logger.info(f"--force: the previous run's checkpoints are kept in {kept}")
    makedirs(workdir)
    write_text_atomic(config_path(workdir), config.to_json(indent=2))
