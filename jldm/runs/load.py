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
from jldm.data.paths import isdir, join
from jldm.diffusion.schedules import Schedule
from jldm.errors import UserError
from jldm.nn.autoencoder import AutoencoderKL
from jldm.runs import checkpoint
from jldm.runs.config_io import read_config
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


def load_run(workdir: str, step: int | None = None, ema: bool = True) -> Loaded:
    """The run in workdir at step (None: the latest readable), with EMA or raw params."""
    if not isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist: pass the --workdir given to train.py")
    config = read_config(workdir)
    return load_state(config, workdir, step, ema)


def load_state(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None, ema: bool = True
) -> Loaded:
    """config's run restored from workdir's checkpoints."""
    kind = kind_of(config)
    if kind == "toy":
        raise UserError(f"{workdir} is a toy-density run: its samples are WORKDIR/samples.npz")
    model = build_vae(config) if kind == "vae" else build_model(config)
    check_checkpoint_folder(join(workdir, "checkpoints"))
    mngr = checkpoint.manager(workdir, read_only=True)
    if mngr.latest_step() is None:
        raise UserError(f"no checkpoint in {workdir}/checkpoints: train first with train.py")
    # Only the params it returns are read: not the other copy nor the optimizer's moments.
    part = "ema_params" if ema else "params"
    if kind == "vae":  # no noise schedule: the prior is N(0, I)
        params, meta = checkpoint.restore(mngr, vae_state_shapes(config, model), step, part=part)
        return Loaded(config, model, params, None, int(meta["step"]))
    params, meta = checkpoint.restore(mngr, unet_state_shapes(config, model), step, part=part)
    stage1 = None
    if kind == "latent":
        ae_params = load_stage1(config, meta["stage1"])
        stage1 = Stage1(build_autoencoder(config), ae_params, float(meta["latent_scale"]))
    return Loaded(config, model, params, build_schedule(config), int(meta["step"]), stage1)
