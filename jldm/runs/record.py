"""What a checkpoint needs to be read, stored with it: the config keys that define its weights.

Every checkpoint's metadata carries RECORD: the keys of the architecture sections (model,
diffusion, data, text, stage1, vae) that say how its weights are read, the network's shape and
the objective's meaning (prediction, schedule, sigma range), as they were when it was written.
A config that disagrees on one of them would build another network, or read the same network's
output under another parameterisation and sample garbage, so reading it is refused with a line
naming the keys. Settings that only change how a run trains or where it reads its data are not
recorded, nor is anything outside those sections (sample.*, train.*). A checkpoint written
before records existed is read unchecked.
"""

import json
import posixpath
from typing import NamedTuple

import ml_collections

from jldm.data.paths import isfile, resolve
from jldm.errors import UserError
from jldm.runs.config_io import ARCHITECTURE, RUNTIME_ONLY, config_path, read_config

RECORD = "reads_as"  # the key of the record in a checkpoint's metadata JSON

# Keys of those sections that change how the weights are trained, not how they are read.
TRAINING_ONLY = {
    "model.dtype",  # the compute dtype: parameters are float32 whatever it is
    "model.dropout",
    "diffusion.cond_drop",
    "diffusion.weighting",
    "diffusion.min_snr_gamma",
    "diffusion.p_mean",
    "diffusion.p_std",
    "diffusion.time_sampling",
    "diffusion.logit_mean",
    "diffusion.logit_std",
    "diffusion.n_projections",  # sliced score matching's estimator of the loss
    "diffusion.probe",
    "diffusion.variance_reduction",
    "data.fashion_dir",  # a folder: the same dataset may move
    "text.tokenizer",  # a folder; its vocabulary size is in the weights' shapes
    "stage1.workdir",
    "vae.num_samples",
    "vae.kl_warmup_steps",
    "vae.iwae_samples",
    "vae.eval_images",
    *(
        f"stage1.{k}"
        for k in (
            "rec_loss kl_weight perceptual_weight perceptual_weights perceptual_steps "
            "disc_weight disc_start batch_size lr warmup_steps weight_decay grad_clip"
        ).split()
    ),
}
# A latent run's stage 1 is read by its own section and the image shape it encodes.
_STAGE1_DATA = ("data.resolution", "data.channels")


class Expected(NamedTuple):
    """The record a config gives, and where that config comes from (for the error line)."""

    record: dict
    source: str


def _flat(tree: dict, prefix: str) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def record(config: ml_collections.ConfigDict, part: str = "run") -> dict:
    """{"section.key": JSON value} of what a checkpoint of config is read by.

    part: "run" (the run's own checkpoints) or "stage1" (a latent run's autoencoder, in
    WORKDIR/stage1 or stage1.workdir).
    """
    tree = json.loads(config.to_json())
    flat = _flat({s: tree[s] for s in ARCHITECTURE if s in tree}, "")
    keep = lambda k: k not in TRAINING_ONLY and k not in RUNTIME_ONLY
    if part == "stage1":
        keep_stage1 = lambda k: (k.startswith("stage1.") or k in _STAGE1_DATA) and keep(k)
        return {k: v for k, v in flat.items() if keep_stage1(k)}
    return {k: v for k, v in flat.items() if keep(k)}


def expected(config: ml_collections.ConfigDict, source: str, part: str = "run") -> Expected:
    """What config says a checkpoint of part holds; source names config in error lines."""
    return Expected(record(config, part), source)


def written_by(workdir: str) -> Expected | None:
    """The record a training process gives the checkpoints it writes in workdir (None: none).

    That is WORKDIR/config.json, which training writes before its first step; for
    WORKDIR/stage1, where a latent run trains its stage 1 (jldm.runs.stage1_state), the
    stage-1 part of the parent run's config.json. A folder with neither (a test's own
    manager) gets no record.
    """
    folder = resolve(workdir).rstrip("/")
    if isfile(config_path(folder)):
        return expected(read_config(folder), config_path(folder))
    parent = posixpath.dirname(folder)
    if posixpath.basename(folder) == "stage1" and isfile(config_path(parent)):
        config = read_config(parent)
        if "stage1" in config:
            return expected(config, config_path(parent), "stage1")
    return None


def _show(value) -> str:
    if value is _MISSING:
        return "missing"
    return value if isinstance(value, str) else json.dumps(value)


_MISSING = object()


def disagreements(want: dict, found: dict) -> list[tuple[str, object, object]]:
    """(key, config's value, checkpoint's value) for each recorded key the config differs on.

    A key the config has and the record lacks is a setting added to jldm after the checkpoint
    was written: not compared.
    """
    return [
        (k, want.get(k, _MISSING), v)
        for k, v in sorted(found.items())
        if want.get(k, _MISSING) != v
    ]


def check(want: Expected, meta: dict, step: int, folder: str) -> None:
    """Refuse a checkpoint whose metadata records other values than want's config has."""
    found = meta.get(RECORD) if isinstance(meta, dict) else None
    if not isinstance(found, dict):
        return  # written before records existed
    diff = disagreements(want.record, found)
    if not diff:
        return
    shown = ", ".join(
        f"{k} ({_show(a)} here, {_show(b)} in the checkpoint)" for k, a, b in diff[:4]
    )
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    raise UserError(
        f"{want.source} disagrees with the checkpoint at step {step} in {folder} on {shown}{more}: "
        f"put the checkpoint's values back into {want.source}, or train a run with the new "
        "values in another --workdir"
    )
