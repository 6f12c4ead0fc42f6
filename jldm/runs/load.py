"""Reading a trained run back: config, model and (EMA) params from its checkpoints.

The workdir may be local or a cloud folder (gs://...: see jldm.data.paths).
"""

from typing import Any, NamedTuple

import ml_collections

from jldm.build import unet_state_shapes
from jldm.build.autoencoder import build_autoencoder
from jldm.build.model import build_model
from jldm.build.noise import build_schedule
from jldm.build.vae import build_vae, vae_state_shapes
from jldm.data.paths import exists, isdir, join
from jldm.diffusion.schedules import Schedule
from jldm.errors import UserError
from jldm.nn.autoencoder import AutoencoderKL
from jldm.runs import checkpoint, record
from jldm.runs.config_io import config_path, read_config
from jldm.runs.kinds import kind_of
from jldm.runs.stage1_state import load_stage1
from jldm.runs.workdir import check_checkpoint_folder


class Stage1(NamedTuple):
    """The autoencoder of a latent run: module, params, and the latent scale factor."""

    model: AutoencoderKL
    params: Any
    scale: float


class Loaded(NamedTuple):
    """A trained run: its config, Flax module, (EMA) params, noise schedule and step.

    stage1: for latent diffusion, the autoencoder the UNet's latents come from.
    """

    config: ml_collections.ConfigDict
    model: Any
    params: Any
    schedule: Schedule
    step: int
    stage1: Stage1 | None = None


def check_workdir(workdir: str) -> None:
    """workdir must be a folder: one line for a path that does not exist and for a file."""
    if isdir(workdir):
        return
    if exists(workdir):
        raise UserError(
            f"workdir {workdir} is a file, not a run's folder: pass the --workdir given to train.py"
        )
    raise UserError(f"workdir {workdir} does not exist: pass the --workdir given to train.py")


def load_run(workdir: str, step: int | None = None, ema: bool = True) -> Loaded:
    """The run in workdir at step (None: the latest readable), with EMA or raw params."""
    check_workdir(workdir)
    if step is not None:
        step = _step_number(step)
    config = read_config(workdir)
    return load_state(config, workdir, step, ema, source=config_path(workdir))


def _step_number(step) -> int:
    """A checkpoint step given as an int (numpy's too) or a string of digits ('4')."""
    if isinstance(step, str) and step.strip().isdigit():
        return int(step)
    if isinstance(step, bool) or not hasattr(step, "__index__") or int(step) < 0:
        raise UserError(f"step {step!r} is no step number: pass a whole number such as 500")
    return int(step)


def _manager(config: ml_collections.ConfigDict, workdir: str, source: str):
    """workdir's checkpoints, read against config's record; refused at once: a toy run, no
    checkpoint."""
    if kind_of(config) == "toy":
        raise UserError(f"{workdir} is a toy-density run: its samples are WORKDIR/samples.npz")
    check_checkpoint_folder(join(workdir, "checkpoints"))
    expect = record.expected(config, source)
    mngr = checkpoint.manager(workdir, read_only=True, expect=expect)
    if mngr.latest_step() is None:
        raise UserError(f"no checkpoint in {workdir}/checkpoints: train first with train.py")
    return mngr


def check_run(workdir: str) -> ml_collections.ConfigDict:
    """What load_run(workdir) refuses without reading an array: no folder, no config.json, a
    toy run, no checkpoint, a latest checkpoint that records another architecture or
    objective. For tools that load several runs, so a bad one stops them before the work.
    -> the run's config."""
    check_workdir(workdir)
    config = read_config(workdir)
    mngr = _manager(config, workdir, config_path(workdir))
    try:
        checkpoint.check_record(mngr, mngr.latest_step())
    except UserError:
        raise
    except Exception:  # a damaged latest step: loading falls back past it and says so
        pass
    return config


def load_state(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int | None = None,
    ema: bool = True,
    source: str = "the config",
) -> Loaded:
    """config's run restored from workdir's checkpoints; a checkpoint that recorded other
    architecture or objective values than config's is refused (source names config)."""
    mngr = _manager(config, workdir, source)
    kind = kind_of(config)
    model = build_vae(config) if kind == "vae" else build_model(config)
    # Only the params it returns are read: not the other copy nor the optimizer's moments.
    part = "ema_params" if ema else "params"
    if kind == "vae":  # no noise schedule: the prior is N(0, I)
        params, meta = checkpoint.restore(mngr, vae_state_shapes(config, model), step, part=part)
        return Loaded(config, model, params, None, int(meta["step"]))
    params, meta = checkpoint.restore(mngr, unet_state_shapes(config, model), step, part=part)
    stage1 = None
    if kind == "latent":
        ae_params = load_stage1(config, meta["stage1"], source)
        stage1 = Stage1(build_autoencoder(config), ae_params, float(meta["latent_scale"]))
    return Loaded(config, model, params, build_schedule(config), int(meta["step"]), stage1)
