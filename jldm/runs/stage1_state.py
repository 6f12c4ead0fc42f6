"""A stage-1 (autoencoder) run's state: where a latent run keeps it, the shapes of its
TrainState, and the trained autoencoder params of a finished run read back (what latent
diffusion and jldm.load need of it, without the training task and its input pipeline)."""

import ml_collections

from jldm.build.autoencoder import init_stage1
from jldm.build.state import TrainState, abstract_state, make_optimizer
from jldm.data.paths import join, resolve
from jldm.errors import UserError
from jldm.runs import checkpoint, record


def stage1_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """stage1.workdir (an existing stage-1 run), or WORKDIR/stage1 where this run trains it."""
    given = config.stage1.workdir
    return resolve(given) if given else join(workdir, "stage1")


def stage1_shapes(config: ml_collections.ConfigDict, tx=None) -> TrainState:
    """Shapes of the stage-1 TrainState (with optimizer tx, default stage1's), unallocated."""
    init = lambda k: init_stage1(config, k)
    return abstract_state(init, tx or make_optimizer(config.stage1), config.seed)


def load_stage1(config: ml_collections.ConfigDict, folder: str, source: str = "the config"):
    """The trained autoencoder params of a finished stage-1 run in folder; one whose checkpoint
    recorded another stage-1 architecture than config's is refused (source names config)."""
    expect = record.expected(config, source, "stage1")
    mngr = checkpoint.manager(folder, read_only=True, expect=expect)
    if mngr.latest_step() is None:
        raise UserError(
            f"no stage-1 checkpoint in {folder}/checkpoints: train stage 1 first, or leave "
            "stage1.workdir empty to train it in WORKDIR/stage1"
        )
    state, _ = checkpoint.restore_latest(mngr, stage1_shapes(config))
    if int(state.step) < config.stage1.steps:
        raise UserError(
            f"stage 1 in {folder} stopped at step {int(state.step)} of {config.stage1.steps}: "
            "rerun train.py to finish it"
        )
    return state.params["ae"]
