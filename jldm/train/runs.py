"""Reading a trained run back: config, model and (EMA) params from its checkpoints.

The workdir may be local or a cloud folder (gs://...: see jldm.data.paths).
"""

import ml_collections

from jldm.build import unet_state_shapes
from jldm.build.autoencoder import build_autoencoder
from jldm.build.model import build_model, is_latent
from jldm.build.noise import build_schedule
from jldm.build.vae import build_vae, is_vae, vae_state_shapes
from jldm.data.paths import isdir, join
from jldm.errors import UserError
from jldm.sampling.run import Loaded, Stage1
from jldm.train import checkpoint
from jldm.train.config_io import read_config
from jldm.train.stage1_state import load_stage1
from jldm.train.workdir import check_checkpoint_folder


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
    if config.data.name.startswith("toy"):
        raise UserError(f"{workdir} is a toy-density run: its samples are WORKDIR/samples.npz")
    model = build_vae(config) if is_vae(config) else build_model(config)
    check_checkpoint_folder(join(workdir, "checkpoints"))
    mngr = checkpoint.manager(workdir, read_only=True)
    if mngr.latest_step() is None:
        raise UserError(f"no checkpoint in {workdir}/checkpoints: train first with train.py")
    # Only the params it returns are read: not the other copy nor the optimizer's moments.
    part = "ema_params" if ema else "params"
    if is_vae(config):  # no noise schedule: the prior is N(0, I)
        params, meta = checkpoint.restore(mngr, vae_state_shapes(config, model), step, part=part)
        return Loaded(config, model, params, None, int(meta["step"]))
    params, meta = checkpoint.restore(mngr, unet_state_shapes(config, model), step, part=part)
    stage1 = None
    if is_latent(config):
        ae_params = load_stage1(config, meta["stage1"])
        stage1 = Stage1(build_autoencoder(config), ae_params, float(meta["latent_scale"]))
    return Loaded(config, model, params, build_schedule(config), int(meta["step"]), stage1)
