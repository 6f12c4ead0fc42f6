"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints, one folder per step."""

import os

import jax
import orbax.checkpoint as ocp

from jldm.errors import UserError
from jldm.train.state import TrainState


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager; only fully written (finalized) steps are listed and restored."""
    path = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(path, options=options)


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
    """Write the state and a JSON of metadata (data position, config name) at state.step."""
    step = int(jax.device_get(state.step))
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    mngr.wait_until_finished()


def restore(
    mngr: ocp.CheckpointManager, abstract_state: TrainState, step: int | None = None
) -> tuple[TrainState, dict]:
    """Restore step (default: latest) into the shapes/shardings of abstract_state."""
    steps = mngr.all_steps()
    if step is None:
        step = mngr.latest_step()
    elif step not in steps:
        raise UserError(
            f"no checkpoint for step {step} in {mngr.directory}: available steps {sorted(steps)}"
        )
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return out.state, out.meta
