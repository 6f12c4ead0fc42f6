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
from jldm.train import workdir as run_folder
from tests.clitools import assert_error_line, train_args
from tests.test_bad_inputs import _snapshot
from tests.tiny import ROOT

HOLD = "import sys, time\nfrom jldm.train.workdir import hold\nwith hold(sys.argv[1]):\n"
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
