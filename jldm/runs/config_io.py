"""The resolved config in WORKDIR/config.json: written by train, read by sample and load.

WORKDIR may be local or a cloud folder (jldm.data.paths): config.json is replaced atomically
either way (a renamed temporary file, one object upload).
"""

import json
import logging
import time

import ml_collections

from jldm.data.paths import (
    exists,
    isfile,
    join,
    listdir,
    makedirs,
    read_text,
    rename,
    write_text_atomic,
)
from jldm.errors import UserError
from jldm.runs.workdir import LOCK

logger = logging.getLogger(__name__)

# Sections that define what a checkpoint is; a workdir keeps them fixed across restarts.
ARCHITECTURE = ("model", "diffusion", "data", "text", "stage1", "vae")
# Keys inside those sections that change how (or how long) steps run, not what a checkpoint holds.
RUNTIME_ONLY = {
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
    if exists(path) and not isfile(path):
        raise UserError(f"{path} is not a file: move it away, or restore the run's config.json")
    if not isfile(path):
        raise UserError(
            f"{workdir} holds no jldm run (no config.json): pass the --workdir given to train.py"
        )
    try:
        config = ml_collections.ConfigDict(json.loads(read_text(path)))
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is no config ({e}): restore the run's config.json") from None
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
    a, b = _plain(read_config(workdir), ARCHITECTURE), _plain(config, ARCHITECTURE)
    return sorted(
        f"{s}.{k}"
        for s in ARCHITECTURE
        # Keys only one side has are settings added to jldm since that run started.
        for k in set(a.get(s, {})) & set(b.get(s, {}))
        if a[s][k] != b[s][k] and f"{s}.{k}" not in RUNTIME_ONLY
    )


def check_config_change(workdir: str, config: ml_collections.ConfigDict, force: bool) -> None:
    """Refuse a workdir whose run has another architecture, unless force."""
    diff = architecture_changes(workdir, config)
    if diff and not force:
        raise UserError(
            f"{workdir} holds a run with a different {', '.join(diff[:4])}: use a new "
            "--workdir, or --force to move that run aside into WORKDIR/replaced-TIMESTAMP"
        )


REPLACED = "replaced-"  # WORKDIR/replaced-TIMESTAMP: a run that --force set aside


def move_run_aside(workdir: str) -> str:
    """Move the run in workdir into the new folder WORKDIR/replaced-TIMESTAMP and return it.

    Everything the run wrote goes (config.json, checkpoints, metrics.jsonl, tb, sample grids,
    its stage 1 and latents), so the folder is a whole run that jldm.load and sample.py read as
    it was. The lock and runs set aside before stay in workdir.
    """
    names = listdir(workdir)
    base = join(workdir, REPLACED + time.strftime("%Y%m%d-%H%M%S"))
    kept, n = base, 1
    while exists(kept):  # a second --force within the same second
        n += 1
        kept = f"{base}-{n}"
    makedirs(kept)
    for name in names:
        if name != LOCK and not name.startswith(REPLACED):
            rename(join(workdir, name), join(kept, name))
    return kept


def write_config(workdir: str, config: ml_collections.ConfigDict, force: bool = False) -> None:
    """Save config; refuse a workdir whose run has another architecture unless force.

    With force, the old run is moved aside whole (move_run_aside), never deleted, and the new
    run starts in an empty workdir.
    """
    check_config_change(workdir, config, force)
    if architecture_changes(workdir, config):
        kept = move_run_aside(workdir)
        logger.info(f"--force: the previous run is kept in {kept} (a run folder of its own)")
    makedirs(workdir)
    write_text_atomic(config_path(workdir), config.to_json(indent=2))
