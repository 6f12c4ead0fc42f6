"""One writer per workdir, and a workdir that cannot be written refused before any work.

The hold is a kernel lock: a second train.py on the same workdir is refused at once, naming the
holder, and a killed holder leaves nothing stuck. A real train.py paused while it holds its
workdir shows the first writer's run unharmed and resumable.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import train
from jldm.api import load
from jldm.cli import run_cli
from jldm.errors import UserError
from jldm.runs import workdir as run_folder
from tests import fake_cloud
from tests.clitools import assert_error_line, train_args
from tests.test_bad_inputs import _snapshot
from tests.tiny import ROOT

HOLD = "import sys, time\nfrom jldm.runs.workdir import hold\nwith hold(sys.argv[1]):\n"
HOLD += "    print('held', flush=True)\n    time.sleep(600)\n"


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with run_folder.hold(str(tmp_path)):
        with pytest.raises(UserError, match=rf"is in use by pid {os.getpid()} on "):
            with run_folder.hold(str(tmp_path)):
                pass
    with run_folder.hold(str(tmp_path)):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by pid {proc.pid} "):
            with run_folder.hold(str(tmp_path)):
                pass
    finally:
        proc.kill()
        proc.wait()
    with run_folder.hold(str(tmp_path)):
        pass


def test_a_folder_that_cannot_be_written_is_refused():
    # /proc refuses new files even to root, for whom a chmod'ed folder stays writable.
    with pytest.raises(UserError, match="not writable"):
        run_folder.check_writable_folder("/proc/jldm-run", "--workdir")
    with pytest.raises(UserError, match="is a file"):
        run_folder.check_writable_folder(__file__, "--workdir")


def _wait_for_hold(workdir: str, pid: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    lock = os.path.join(workdir, run_folder.LOCK)
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(lock):
            with open(lock) as f:
                if f.read().startswith(f"pid {pid} "):
                    return
        time.sleep(0.05)
    raise AssertionError(f"train.py did not take its workdir (exit {proc.poll()})")


def test_a_second_train_py_is_refused_and_the_first_run_is_unharmed(tmp_path, capsys, monkeypatch):
    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    first = subprocess.Popen(
        [sys.executable, *train_args(workdir, data_dir, "--config.train.steps=2")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_hold(workdir, first.pid, first)
        first.send_signal(signal.SIGSTOP)  # holding the workdir, mid-run
        before = _snapshot(workdir)
        monkeypatch.chdir(ROOT)
        argv = train_args(workdir, data_dir, "--config.train.steps=2")
        code = run_cli(train.main, argv, flag_values=train.FLAGS)
        assert_error_line(code, capsys.readouterr().err, "in use by", f"pid {first.pid}")
        assert _snapshot(workdir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert f"trained: {workdir}" in out
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert len(steps) == len(set(steps)), steps  # one writer: every step logged once
    assert load(workdir).step == 2


# Workdirs on a cloud path: the fake gs:// of tests/fake_cloud.py.


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    """The fake gs:// filesystem class (tests.fake_cloud.install)."""
    yield from fake_cloud.install(monkeypatch, tmp_path)


def test_cloud_paths_are_kept_as_given_and_local_ones_made_absolute(tmp_path, monkeypatch):
    from jldm.data.paths import is_local, join, resolve

    monkeypatch.chdir(tmp_path)
    assert resolve("gs://bucket/runs/x/") == "gs://bucket/runs/x"
    assert resolve("runs/x") == str(tmp_path / "runs" / "x")
    assert resolve("file:///data/x") == "/data/x" and is_local("file:///data/x")
    assert not is_local("s3://b/x") and join("gs://b/x/", "lock") == "gs://b/x/lock"


def test_a_local_workdir_given_as_an_epath_is_checked_and_held(tmp_path):
    from etils import epath

    workdir = epath.Path(tmp_path) / "run"
    run_folder.check_workdir(workdir)
    with run_folder.hold(workdir):
        assert (workdir / run_folder.LOCK).read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(UserError, match="is in use by"):
            with run_folder.hold(str(workdir)):
                pass


def test_a_cloud_workdir_is_checked_and_held_through_epath(cloud):
    import socket

    from etils import epath

    run = epath.Path("gs://bucket/run")
    run_folder.check_workdir(str(run))
    assert run.is_dir() and list(run.iterdir()) == []  # the probe object is gone
    epath.Path("gs://bucket/object").write_text("x")
    with pytest.raises(UserError, match="is an object, not a folder"):
        run_folder.check_workdir("gs://bucket/object")
    (run / "checkpoints").write_text("x")
    with pytest.raises(UserError, match="is a file, not the run's checkpoint folder"):
        run_folder.check_workdir(str(run))
    (run / "checkpoints").unlink()

    # No kernel lock: a lock object naming this process, a warning, removed at the end.
    with pytest.warns(UserWarning, match="cannot be locked") as seen:
        with run_folder.hold(str(run)):
            text = (run / run_folder.LOCK).read_text()
            assert text.startswith(f"pid {os.getpid()} on {socket.gethostname()} since ")
    assert "names" not in str(seen[0].message)
    assert not (run / run_folder.LOCK).exists()
    # A lock object left by a killed run is named, and does not stop a restarted one.
    (run / run_folder.LOCK).write_text("pid 4242 on node-7 since 2026-01-01 00:00:00\n")
    with pytest.warns(UserWarning, match="names pid 4242 on node-7"):
        with run_folder.hold(str(run)):
            assert (run / run_folder.LOCK).read_text().startswith(f"pid {os.getpid()} ")
    assert not (run / run_folder.LOCK).exists()


def test_an_unwritable_cloud_folder_is_refused(cloud, monkeypatch):
    def refuse(self, path, mode="rb", *args, **kwargs):
        if "r" not in mode:
            raise PermissionError(f"403 Forbidden: no write access to {path}")
        return super(cloud, self)._open(path, mode, *args, **kwargs)

    monkeypatch.setattr(cloud, "_open", refuse)
    with pytest.raises(UserError, match=r"gs://ro/run is not writable \(PermissionError: 403"):
        run_folder.check_workdir("gs://ro/run")


def test_sample_shards_on_a_cloud_folder_are_objects_fid_reads_back(cloud):
    import numpy as np

    from jldm.eval.fid import load_set
    from jldm.sampling.shards import _write_atomic, shard_path, shard_paths

    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    for i in (1, 0):
        _write_atomic(shard_path("gs://bucket/shards", i), images=images + i, labels=np.arange(3))
    paths = shard_paths("gs://bucket/shards")
    assert paths == ["gs://bucket/shards/shard_00000.npz", "gs://bucket/shards/shard_00001.npz"]
    kind, back = load_set(paths[1])
    assert kind == "images"
    np.testing.assert_array_equal(back, images + 1)
