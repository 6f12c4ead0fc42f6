"""Crashes, damaged checkpoints and multi-process runs: training still ends where it should."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.api import train as run
from jldm.build import unet_state_shapes
from jldm.build.model import build_model
from jldm.errors import UserError
from jldm.runs import checkpoint, orbax_echoes
from jldm.train import distributed
from jldm.train.sharding import make_mesh, replicated
from tests.clitools import assert_user_error, cli, train_args
from tests.tiny import ROOT, tiny_config

STEPS = 6  # checkpoints every 2 steps: 2, 4 and 6, all kept (keep_checkpoints=3)
KEPT = ["2", "4", "6"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted in-process run of STEPS steps: the state every recovery must reach."""
    workdir = str(tmp_path_factory.mktemp("ref") / "w")
    assert run(tiny_config(data_dir, **{"train.steps": STEPS}), workdir)
    return workdir


def _state(workdir: str, overrides: dict | None = None, step: int | None = None):
    """TrainState at step (default: the latest readable), on this process's 4-device mesh."""
    config = tiny_config("unused", **(overrides or {}))
    rep = replicated(make_mesh())
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
        unet_state_shapes(config, build_model(config)),
    )
    return checkpoint.restore(checkpoint.manager(workdir, read_only=True), abstract, step)[0]


def _assert_same_state(a, b) -> None:
    """Step, params, EMA params, optimizer state and RNG all bit-identical."""
    assert int(a.step) == int(b.step)
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _copy_run(src: str, dst) -> str:
    dst = str(dst)
    shutil.copytree(src, dst)
    return dst


def _corrupt(workdir: str, step: int) -> None:
    """Truncate every array data file of a step to 0 bytes, as a full disk or a crash can."""
    pattern = os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*")
    files = glob.glob(pattern, recursive=True)
    files = [f for f in files if os.path.isfile(f)]
    assert files
    for f in files:
        os.truncate(f, 0)


def _tree_bytes(folder: str) -> dict:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def _steps_on_disk(workdir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


# --- crash safety -----------------------------------------------------------------------------


def test_sigkill_mid_training_then_rerun_is_bit_identical(reference, data_dir, tmp_path):
    workdir = tmp_path / "w"
    ckpts = workdir / "checkpoints"
    args = [sys.executable, *train_args(workdir, data_dir, f"--config.train.steps={STEPS}")]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    # Kill while a checkpoint after the first is being written (its temporary folder exists),
    # or, if a write is never caught in the act, right after the second one is finalized.
    killed_in_write, deadline = False, time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            names = os.listdir(ckpts) if ckpts.is_dir() else []
            finalized = [n for n in names if n.isdigit()]
            writing = [n for n in names if ".orbax-checkpoint-tmp" in n]
            if finalized and (writing or len(finalized) >= 2):
                proc.send_signal(signal.SIGKILL)
                killed_in_write = bool(writing)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "train.py ended before it could be killed"
    mngr = checkpoint.manager(str(workdir), read_only=True)
    killed_at = mngr.latest_step()
    assert killed_at is not None and killed_at < STEPS
    # Exactly the finalized folders are listed; a leftover temporary folder is not a step.
    names = os.listdir(ckpts)
    assert sorted(mngr.all_steps()) == sorted(int(n) for n in names if n.isdigit())
    leftovers = [int(n.split(".")[0]) for n in names if ".orbax-checkpoint-tmp" in n]
    assert not set(leftovers) & set(mngr.all_steps())
    print(f"killed after step {killed_at} was saved; mid-write: {killed_in_write} {leftovers}")

    proc = cli(*train_args(workdir, data_dir, f"--config.train.steps={STEPS}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [n for n in _steps_on_disk(str(workdir)) if not n.isdigit()]
    _assert_same_state(_state(str(workdir)), _state(reference))


def test_half_written_step_folders_are_not_taken_as_complete(reference, data_dir, tmp_path):
    workdir = _copy_run(reference, tmp_path / "w")
    ckpts = os.path.join(workdir, "checkpoints")
    # Orbax writes a step into STEP.orbax-checkpoint-tmp and renames it when complete: a crash
    # leaves the temporary name. Leave one with half of its files, as a killed write would.
    tmp = os.path.join(ckpts, f"{STEPS}.orbax-checkpoint-tmp")
    os.replace(os.path.join(ckpts, str(STEPS)), tmp)
    for f in sorted(glob.glob(os.path.join(tmp, "state", "**", "*"), recursive=True))[::2]:
        if os.path.isfile(f):
            os.remove(f)
    assert checkpoint.manager(workdir, read_only=True).all_steps() == [2, 4]
    assert int(_state(workdir).step) == 4

    # Rerunning trains 4 -> 6 again, writes step 6 over the leftover, and lands on the same state.
    assert run(tiny_config(data_dir, **{"train.steps": STEPS}), workdir)
    assert _steps_on_disk(workdir) == KEPT
    _assert_same_state(_state(workdir), _state(reference))


# --- damaged checkpoints -----------------------------------------------------------------------


def test_training_falls_back_past_an_unreadable_latest_step_and_keeps_it(
    reference, data_dir, tmp_path, caplog
):
    workdir = _copy_run(reference, tmp_path / "w")
    _corrupt(workdir, STEPS)
    damaged = _tree_bytes(os.path.join(workdir, "checkpoints", str(STEPS)))
    assert run(tiny_config(data_dir, **{"train.steps": STEPS}), workdir)
    # The library warns through its logger (a command shows the same line on stderr).
    notes = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(notes) == 1, caplog.text[-3000:]
    assert (notes[0].name, notes[0].levelname) == ("jldm.runs.checkpoint", "WARNING")
    note = notes[0].getMessage()
    assert f"step {STEPS} " in note and "using step 4" in note
    assert f"corrupt-{STEPS}" in note
    # The damaged folder is kept, byte for byte, beside the rewritten step.
    assert _steps_on_disk(workdir) == [*KEPT, f"corrupt-{STEPS}"]
    assert _tree_bytes(os.path.join(workdir, "checkpoints", f"corrupt-{STEPS}")) == damaged
    _assert_same_state(_state(workdir), _state(reference))


def test_no_readable_checkpoint_is_one_error_and_nothing_is_moved(reference, data_dir, tmp_path):
    workdir = _copy_run(reference, tmp_path / "w")
    for step in (2, 4, 6):
        _corrupt(workdir, step)
    with pytest.raises(UserError, match="no checkpoint in .*checkpoints can be read"):
        run(tiny_config(data_dir, **{"train.steps": STEPS + 2}), workdir)
    assert _steps_on_disk(workdir) == KEPT


def test_sample_uses_the_previous_step_when_the_latest_is_unreadable(reference, tmp_path):
    workdir = _copy_run(reference, tmp_path / "w")
    _corrupt(workdir, STEPS)
    common = ["--num", "1", "--classes", "2", "--steps", "2", "--nometrics"]
    proc = cli("sample.py", "--workdir", workdir, *common, "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [s for s in proc.stderr.splitlines() if "cannot be read" in s]
    assert len(notes) == 1 and f"step {STEPS} " in notes[0] and "using step 4" in notes[0]
    assert proc.stdout.startswith("step 4:"), proc.stdout
    assert os.path.exists(tmp_path / "s.npz")
    # Sampling only reads: the damaged folder stays where it was.
    assert _steps_on_disk(workdir) == KEPT

    explicit = cli("sample.py", "--workdir", workdir, "--step", str(STEPS), *common)
    assert_user_error(explicit, f"step {STEPS}", "cannot be read", "another step")
    for step in (2, 4):
        _corrupt(workdir, step)
    none = cli("sample.py", "--workdir", workdir, *common, "--out", str(tmp_path / "t"))
    assert_user_error(none, os.path.join(workdir, "checkpoints"), "can be read")
    assert not os.path.exists(tmp_path / "t.npz")


# --- multi-process -------------------------------------------------------------------------


def test_echoes_of_a_failed_restore_are_dropped_and_nothing_else():
    """The filters drop exactly the noise a failed restore leaves behind, at any moment.

    Each echo is made for real: a coroutine collected unawaited, an error in a __del__
    (unraisable), the closed loop reaching sys.excepthook, and asyncio's report of a task
    whose exception nobody retrieved; the user's own warnings and crashes still print.
    """
    script = """
import asyncio, gc, sys, threading, warnings
from jldm.runs import orbax_echoes
orbax_echoes.quiet_abandoned_reads_for_process()
orbax_echoes.quiet_abandoned_reads_for_process()  # a second call installs nothing twice

async def read():
    raise ValueError("bad bytes; tensorstore_spec={...}")

read(); gc.collect()  # never awaited
class Callback:
    def __del__(self):
        raise RuntimeError("Event loop is closed")

Callback()
sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
loop = asyncio.new_event_loop()
loop.run_until_complete(asyncio.sleep(0)); task = loop.create_task(read())
loop.run_until_complete(asyncio.sleep(0.01)); loop.close(); del task; gc.collect()
print("quiet", file=sys.stderr)
warnings.warn("a warning of the user's own")
sys.excepthook(RuntimeError, RuntimeError("a crash of the user's own"), None)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = proc.stderr.split("quiet\n")
    assert before == "", before[-3000:]
    assert "a warning of the user's own" in after and "a crash of the user's own" in after


def test_a_library_restore_leaves_the_process_hooks_as_they_were():
    """jldm.load in a notebook: the filters live only as long as the restore."""
    import logging
    import warnings

    hooks = (sys.excepthook, sys.unraisablehook)
    filters = list(warnings.filters)
    log_filters = list(logging.getLogger("asyncio").filters)
    with orbax_echoes.quiet_abandoned_reads():
        assert (sys.excepthook, sys.unraisablehook) != hooks
    assert (sys.excepthook, sys.unraisablehook) == hooks
    assert list(warnings.filters) == filters
    assert list(logging.getLogger("asyncio").filters) == log_filters


def test_distributed_settings_come_from_flags_then_environment():
    env = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }
    assert distributed.settings(environ={}) is None
    assert distributed.settings(environ=env) == ("10.0.0.1:1234", 4, 3)
    assert distributed.settings("h:9", 2, 0, environ=env) == ("h:9", 2, 0)
    bad = [
        ({"JAX_NUM_PROCESSES": "2"}, "--coordinator, --process_id missing"),
        ({**env, "JAX_PROCESS_ID": "4"}, "not in 0..3"),
        ({**env, "JAX_NUM_PROCESSES": "two"}, "not an integer"),
        ({**env, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, "host:port"),
        ({**env, "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, ">= 1"),
    ]
    for environ, words in bad:
        with pytest.raises(UserError, match=words):
            distributed.settings(environ=environ)


def test_a_cluster_job_joins_by_itself_and_flags_decide_first():
    slurm = {"SLURM_JOB_ID": "17", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}
    mpi = {"OMPI_COMM_WORLD_SIZE": "4"}
    tpu = {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}
    for env in (slurm, mpi, tpu):
        assert distributed.cluster(env) is not None
        assert distributed.settings(environ=env) == distributed.AUTO
        assert distributed.settings(environ=env, mode="off") is None
        assert distributed.settings("h:9", 2, 1, environ=env) == ("h:9", 2, 1)
    # One task, one host, or no cluster: a single process unless asked.
    batch_script = {"SLURM_JOB_ID": "17", "SLURM_NTASKS": "8"}  # not inside srun
    for env in (batch_script, {"TPU_WORKER_HOSTNAMES": "t0"}, {}):
        assert distributed.cluster(env) is None and distributed.settings(environ=env) is None
        assert distributed.settings(environ=env, mode="auto") == distributed.AUTO
    with pytest.raises(UserError, match="--distributed='always'"):
        distributed.settings(environ={}, mode="always")


def test_distributed_auto_outside_a_cluster_is_one_error_line(tmp_path):
    proc = cli(
        "train.py", "--config", "configs/digits_ddpm.py", "--workdir", str(tmp_path / "w"),
        "--distributed=auto",
    )  # fmt: skip
    assert_user_error(proc, "--distributed=off")
    assert os.listdir(tmp_path) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_with_the_same_global_batch(data_dir, tmp_path):
    steps, small = 6, {"train.steps": 6, "model.channel_mult": (1,)}
    one = str(tmp_path / "one")
    assert run(tiny_config(data_dir, **small), one)  # 4 devices; also prepares the dataset

    # The two processes resume the one-process run from its step 2: that also covers a
    # multi-process restore, and spares them compiling the initialisation (they compile
    # everything from scratch, see distributed.py; one UNet level keeps that short).
    two = tmp_path / "two"
    (two / "checkpoints").mkdir(parents=True)
    shutil.copy(os.path.join(one, "config.json"), two / "config.json")
    shutil.copytree(os.path.join(one, "checkpoints", "2"), two / "checkpoints" / "2")
    port = _free_port()
    # A later override replaces the tiny flags' channel_mult (tuples included).
    args = train_args(
        two, data_dir, f"--config.train.steps={steps}", "--config.model.channel_mult=1"
    )
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        # Two devices each, and the suite's other XLA flags (conftest: quicker compiles).
        env["XLA_FLAGS"] = re.sub(
            r"host_platform_device_count=\d+", "host_platform_device_count=2", env["XLA_FLAGS"]
        )
        if pid == 0:  # process 0 from flags, process 1 from the environment
            flags = ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2"]
            flags += ["--process_id", "0"]
        else:
            flags = []
            env.update(
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID="1",
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, *args, *flags],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=580) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert [o.count("trained:") for o, _ in outs] == [1, 0]  # only process 0 reports

    # One checkpoint set, in which both processes wrote their part of every new step.
    assert _steps_on_disk(str(two)) == ["2", "4", "6"]
    for step in ("4", "6"):
        state_dir = two / "checkpoints" / step / "state"
        assert sorted(p.name for p in state_dir.glob("ocdbt.process_*")) == [
            "ocdbt.process_0",
            "ocdbt.process_1",
        ]
    # Only process 0 logs: one line per log step (4 and 6), not one per process.
    assert [json.loads(s)["step"] for s in (two / "metrics.jsonl").open()] == [4, 6]

    a, b = _state(one, small), _state(str(two), small)
    assert int(a.step) == int(b.step) == steps
    # The gradient all-reduce runs in gloo across processes instead of inside one process, so
    # float32 sums are added in another order: the runs agree to rounding, not bit for bit
    # (at most 1.1e-6 of a leaf's norm here after 4 steps, on a bias's Adam moment; a wrong
    # batch split or a missing all-reduce would differ by the order of the norm itself).
    for x, y in zip(
        jax.tree_util.tree_leaves((a.params, a.ema_params, a.opt_state)),
        jax.tree_util.tree_leaves((b.params, b.ema_params, b.opt_state)),
        strict=True,
    ):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(y - x) <= 1e-5 * np.linalg.norm(x), np.abs(y - x).max()


def test_a_part_of_the_state_is_restored_alone(tmp_path):
    """jldm.load reads only the EMA params: the same arrays as the whole state's."""
    from jldm.build.state import TrainState

    p = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    state = TrainState(
        step=jnp.array(3, jnp.int32),
        params=p,
        ema_params=jax.tree_util.tree_map(lambda x: x * 2 + 1, p),
        opt_state=(jnp.full(5, 7.0),),
        rng=jax.random.PRNGKey(0),
    )
    writer = checkpoint.manager(str(tmp_path))
    checkpoint.save(writer, state, {"step": 3})
    writer.wait_until_finished()
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    reader = checkpoint.manager(str(tmp_path), read_only=True)
    whole, _ = checkpoint.restore(reader, abstract)
    for part in ("ema_params", "params"):
        for step in (None, 3):
            got, meta = checkpoint.restore(reader, abstract, step, part=part)
            assert meta == {"step": 3}
            assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(p)
            for a, b in zip(
                jax.tree.leaves(got), jax.tree.leaves(getattr(whole, part)), strict=True
            ):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
