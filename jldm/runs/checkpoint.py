"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints, one folder per step.

WORKDIR may be a cloud folder (gs://...): Orbax gets that path as given and writes it itself.
"""

import functools
import logging
import os
import weakref

import jax
import orbax.checkpoint as ocp

from jldm.build.state import TrainState
from jldm.data.paths import exists, join, rename, resolve
from jldm.errors import UserError
from jldm.runs import record
from jldm.runs.orbax_echoes import quiet_abandoned_reads

logger = logging.getLogger(__name__)

# Unreadable step folders are renamed to this prefix + step; orbax's step pattern (digits only)
# does not match it, so they are kept for the user but never listed or restored.
CORRUPT_PREFIX = "corrupt-"

# Each manager's record (jldm.runs.record): what it saves with every step, and what a step's
# stored record is checked against before the step is restored.
_EXPECTED: "weakref.WeakKeyDictionary[ocp.CheckpointManager, record.Expected]" = (
    weakref.WeakKeyDictionary()
)


def manager(
    workdir: str, keep: int = 3, read_only: bool = False, expect: record.Expected | None = None
) -> ocp.CheckpointManager:
    """A CheckpointManager of WORKDIR/checkpoints (a local workdir made absolute, a cloud one
    as given); only fully written (finalized) steps are listed and restored.

    expect: the record (jldm.runs.record) of the config the checkpoints are read with; a step
    that stored another is refused. A writer (training) without one takes workdir's
    config.json (record.written_by) and stores it with every step.
    """
    mngr = _manager(join(resolve(workdir), "checkpoints"), keep, read_only)
    if expect is None and not read_only:
        expect = record.written_by(workdir)
    if expect is not None:
        _EXPECTED[mngr] = expect
    return mngr


@functools.cache
def _one_writer_per_array_on_one_cpu_process() -> None:
    """Orbax's default on CPU and TPU splits each replicated array into one slice per device and
    writes the slices in parallel. In a single CPU process every device is this process's
    memory, so the split only costs: a slice program compiled per array shape and device, and
    one more copy of each (the tiny test state has 536 arrays: 2,144 slices per save on 4
    devices). There each array is written whole from its first replica, as Orbax does on GPUs;
    the saved values and their restore are the same. Processes of a multi-process run keep the
    default: each writes its share."""
    if jax.default_backend() == "cpu" and jax.process_count() == 1:
        handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _manager(path, keep: int, read_only: bool) -> ocp.CheckpointManager:
    _one_writer_per_array_on_one_cpu_process()
    # A reader is one process's business (process 0 sampling the final grid, a notebook):
    # without this, orbax makes every process of a multi-process run meet in a barrier.
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        # Writes go on in the background while training continues; save() returns once the
        # arrays are copied off the device, and fit waits for the last write before it ends.
        enable_async_checkpointing=not read_only,
        multiprocessing_options=alone if read_only else ocp.options.MultiprocessingOptions(),
    )
    return ocp.CheckpointManager(path, options=options)


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
    """Start writing the state and a JSON of metadata (data position, config name) at
    state.step; mngr.wait_until_finished() waits for the write (and the one before it)."""
    step = int(jax.device_get(state.step))
    if (expect := _EXPECTED.get(mngr)) is not None:
        meta = {**meta, record.RECORD: expect.record}
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )


def _placed(abstract_state: TrainState) -> TrainState:
    """Leaves without a sharding go to this process's first device.

    Otherwise orbax would reuse the shardings the checkpoint was saved with, which fails on a
    host with other devices (a notebook reading a run trained on 8 GPUs, or process 0 of a
    multi-process run reading alone).
    """
    single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def place(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single)
        return x

    return jax.tree_util.tree_map(place, abstract_state)


def check_record(mngr: ocp.CheckpointManager, step: int) -> None:
    """Refuse step when its stored record disagrees with the manager's config (before its arrays
    are read, so the line names the keys rather than an array shape)."""
    if (expect := _EXPECTED.get(mngr)) is None:
        return
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    record.check(expect, meta, step, os.fspath(mngr.directory))


def _restore_step(
    mngr: ocp.CheckpointManager, abstract_state: TrainState, step: int, part: str | None = None
) -> tuple[TrainState, dict]:
    check_record(mngr, step)
    if part is not None:
        # Only this field of the TrainState is read: the EMA params of a notebook's run cost a
        # quarter of the whole state (params, EMA and both Adam moments).
        item = {part: _placed(getattr(abstract_state, part))}
        # A manager of its own: one that restored whole states has tied "state" to them.
        out = _manager(mngr.directory, 1, read_only=True).restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out.state[part], out.meta
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_placed(abstract_state)), meta=ocp.args.JsonRestore()
        ),
    )
    return out.state, out.meta


def _reason(e: BaseException) -> str:
    """The first line of an exception, short enough to sit inside a one-line message."""
    lines = str(e).strip().splitlines()
    # TensorStore appends a multi-kilobyte spec dump after this marker.
    text = lines[0].split(" See full TensorStore")[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def restore(
    mngr: ocp.CheckpointManager,
    abstract_state: TrainState,
    step: int | None = None,
    part: str | None = None,
) -> tuple[TrainState, dict]:
    """Restore step into the shapes/shardings of abstract_state; None: see restore_latest.

    part: the name of one TrainState field (e.g. "ema_params"): only it is read and returned.
    """
    if step is None:
        return restore_latest(mngr, abstract_state, part=part)
    steps = mngr.all_steps()
    if step not in steps:
        raise UserError(
            f"no checkpoint for step {step} in {mngr.directory}: available steps {sorted(steps)}"
        )
    try:
        with quiet_abandoned_reads():
            return _restore_step(mngr, abstract_state, step, part)
    except UserError:
        raise
    except Exception as e:  # orbax and tensorstore raise plain Exception/ValueError on bad bytes
        raise UserError(
            f"checkpoint step {step} in {mngr.directory} cannot be read ({_reason(e)}): "
            f"pick another step from {sorted(steps)}"
        ) from None


def _move_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> list[str]:
    """Rename unreadable step folders to corrupt-STEP (process 0), so those steps can be saved."""
    root = os.fspath(mngr.directory)
    moved = []
    for step in steps:
        dst = join(root, f"{CORRUPT_PREFIX}{step}")
        n = 1
        while exists(dst):
            n += 1
            dst = join(root, f"{CORRUPT_PREFIX}{step}.{n}")
        if jax.process_index() == 0:
            rename(join(root, str(step)), dst)
        moved.append(dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jldm_checkpoint_move_aside")
    mngr.reload()
    return moved


def restore_latest(
    mngr: ocp.CheckpointManager,
    abstract_state: TrainState,
    move_aside: bool = False,
    part: str | None = None,
) -> tuple[TrainState, dict]:
    """Restore the newest checkpoint that can be read, falling back past unreadable ones.

    A fallback is announced in one line on stderr naming the bad step(s) and the step used. With
    move_aside (the training loop), bad step folders are renamed to checkpoints/corrupt-STEP,
    never deleted, so that training can write those steps again. Raises UserError when there is
    no checkpoint or none can be read; nothing is moved then.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise UserError(f"no checkpoint in {mngr.directory}: train first with train.py")
    bad: list[tuple[int, str]] = []
    for step in steps:
        try:
            with quiet_abandoned_reads():
                state, meta = _restore_step(mngr, abstract_state, step, part)
        except UserError:
            raise  # a config that disagrees with the record: no older step would agree either
        except Exception as e:  # orbax/tensorstore raise plain Exception/ValueError on bad bytes
            bad.append((step, _reason(e)))
            continue
        if bad:
            _report_fallback(mngr, bad, step, move_aside)
        return state, meta
    # Every step failed: more likely a mismatch with this program (devices, shapes, orbax
    # version) than all of them being damaged, so nothing is moved.
    raise UserError(
        f"no checkpoint in {mngr.directory} can be read (step {bad[0][0]}: {bad[0][1]}): "
        "move that folder aside to train from scratch, or restore it from a backup"
    )


def _report_fallback(
    mngr: ocp.CheckpointManager, bad: list[tuple[int, str]], used: int, move_aside: bool
) -> None:
    names = ("step " if len(bad) == 1 else "steps ") + ", ".join(str(s) for s, _ in bad)
    line = (
        f"warning: checkpoint {names} in {mngr.directory} cannot be read ({bad[0][1]}); "
        f"using step {used}"
    )
    if move_aside:
        moved = _move_aside(mngr, [s for s, _ in bad])
        line += f"; kept as {', '.join(moved)}"
    if jax.process_index() == 0:
        logger.warning(line)
