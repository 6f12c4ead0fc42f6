"""Faults of the machine as one line: a full disk, a folder where a file should be, a link to
nothing or a link loop, a cloud path without its filesystem or its network, Ctrl-C before the
first step. Each is one `error:` line naming the path and the cause, exit 2 (130 for Ctrl-C),
with the libraries' own reports of it kept off the terminal and nothing written before it.

A full disk is an injected OSError(ENOSPC) (or Orbax's error for one); nothing here trains or
compiles a sampler.
"""

import errno
import importlib
import logging
import os
import threading
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import logging as absl_logging
from PIL import Image

import jldm
import sample
import train
from jldm.build.state import abstract_state, create_state
from jldm.cli import INTERRUPTED, run_cli
from jldm.errors import UserError
from jldm.runs import checkpoint
from jldm.runs.config_io import write_config
from jldm.train import entry
from jldm.train.fit import Task, fit
from jldm.train.saves import CheckpointNotWritten
from tests import fake_cloud
from tests.clitools import assert_error_line
from tests.test_value_checks import _run, _snapshot
from tests.tiny import ROOT, tiny_config, tiny_flags

W, T = "{workdir}", "{tmp}"
REAL_LOAD = jldm.load


def _train(*extra):
    return ["train.py", "--config", "configs/digits_ddpm.py", "--workdir", W, *extra]


def _sample(*extra):
    return ["sample.py", "--workdir", W, "--nometrics", "--out", f"{T}/s", *extra]


def _not_json(w):
    (w / "config.json").write_text("{not json")


def _folder(name):
    def setup(w):
        path = w / name
        if path.exists():
            path.unlink()
        path.mkdir()
        (path / "kept").write_text("x")

    return setup


def _link(to):
    def setup(w):
        (w.parent / "link").symlink_to(w.parent / to)
        if to == "loop":
            (w.parent / "loop").symlink_to(w.parent / "link")

    return setup


def _a_file(name):
    return lambda w: (w / name).write_text("not a folder")


# (id, setup of the run folder w, argv, words of the error line)
CASES = [
    ("train-config-not-json", _not_json, _train(), ["config.json", "restore"]),
    ("sample-config-not-json", _not_json, _sample(), ["config.json", "Expecting property"]),
    ("train-config-a-folder", _folder("config.json"), _train(), ["config.json", "a folder"]),
    ("sample-config-a-folder", _folder("config.json"), _sample(), ["config.json", "not a file"]),
    ("train-lock-a-folder", _folder("lock"), _train(), ["lock", "a folder"]),
    ("train-metrics-a-folder", _folder("metrics.jsonl"), _train(), ["metrics.jsonl", "a folder"]),
    ("train-tb-a-file", _a_file("tb"), _train(), ["tb", "a file"]),
    (
        "train-workdir-dangling",
        _link("nowhere"),
        [*_train()[:4], f"{T}/link"],
        ["link", "which does not exist"],
    ),
    ("train-workdir-loop", _link("loop"), [*_train()[:4], f"{T}/link"], ["link", "loop"]),
    (
        "sample-workdir-loop",
        _link("loop"),
        ["sample.py", "--workdir", f"{T}/link", "--out", f"{T}/s"],
        ["--workdir", "loop"],
    ),
    (
        "sample-out-below-dangling",
        _link("nowhere"),
        _sample("--out", f"{T}/link/s"),
        ["--out", "link", "does not exist"],
    ),
]


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    """tmp/w: the tiny config's run folder; jldm.load answers with its run (no params)."""
    folder = tmp_path / "w"
    write_config(str(folder), tiny_config(str(tmp_path / "tfds")))
    monkeypatch.setattr(jldm, "load", lambda w, step=None, **k: _run())
    monkeypatch.chdir(ROOT)
    return folder


def _cli(script, argv, tmp_path, capsys, *words, code=2) -> str:
    """argv in-process: one error line with words and the exit code; nothing on disk changed."""
    before = _snapshot(tmp_path)
    args = [a.replace(W, str(tmp_path / "w")).replace(T, str(tmp_path)) for a in argv]
    if args[0] == "train.py":
        args = [*args[:5], *tiny_flags(str(tmp_path / "tfds")), *args[5:]]
    got = run_cli(script.main, args, flag_values=script.FLAGS)
    err = capsys.readouterr().err
    assert got == code, err
    assert_error_line(2, err, *words)
    assert _snapshot(tmp_path) == before
    return err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_fault_on_disk_is_one_line_and_nothing_is_written(
    run_folder, tmp_path, capsys, monkeypatch, case
):
    name, setup, argv, words = case
    if name.startswith("sample-config"):
        monkeypatch.setattr(jldm, "load", REAL_LOAD)  # the run's config.json is the fault
    setup(run_folder)
    _cli(train if argv[0] == "train.py" else sample, argv, tmp_path, capsys, *words)


def test_sample_py_on_a_full_disk_names_the_file_and_keeps_what_was_there(
    run_folder, tmp_path, capsys, monkeypatch
):
    (tmp_path / "s.png").write_bytes(b"an earlier grid")
    monkeypatch.setattr(jldm, "generate", lambda run, **k: np.zeros((10, 8, 8, 1), np.float32))
    real_save = Image.Image.save

    def full(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # the whole PNG is written, then the flush fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    argv = _sample("--num", "1", "--steps", "2")
    _cli(sample, argv, tmp_path, capsys, f"{tmp_path}/s.png", "No space left", "free some space")


def test_sample_py_replaces_the_grid_and_its_npz_both_or_neither(
    run_folder, tmp_path, capsys, monkeypatch
):
    (tmp_path / "s.png").write_bytes(b"an earlier grid")
    (tmp_path / "s.npz").write_bytes(b"its earlier samples")
    monkeypatch.setattr(jldm, "generate", lambda run, **k: np.zeros((10, 8, 8, 1), np.float32))
    real_savez = np.savez

    def full(file, **arrays):
        real_savez(file, **arrays)  # the grid is written whole, then the .npz's flush fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    argv = _sample("--num", "1", "--steps", "2")
    _cli(sample, argv, tmp_path, capsys, f"{tmp_path}/s.npz", "No space left", "free some space")
    assert (tmp_path / "s.png").read_bytes() == b"an earlier grid"
    assert (tmp_path / "s.npz").read_bytes() == b"its earlier samples"
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def _tiny_task() -> Task:
    """Two steps of a state of four zeros: the loop's checkpoints without a model."""
    init_fn, tx = (lambda k: {"w": jnp.zeros((4,))}), optax.sgd(0.1)
    section = ml_collections.ConfigDict(
        {"steps": 2, "checkpoint_every": 1, "log_every": 1, "keep_checkpoints": 3}
    )
    metrics = {"loss": jnp.zeros((1,)), "nonfinite": jnp.zeros((1,), bool)}
    return Task(
        name="train",
        section=section,
        shapes=abstract_state(init_fn, tx, 0),
        init=lambda: create_state(init_fn, tx, 0),
        step=lambda state, _: (state.replace(step=state.step + 1), metrics),
        inputs=lambda start, stop: iter([None] * (stop - start)),
    )


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_last_good_one_is_kept(
    tmp_path, monkeypatch
):
    workdir = str(tmp_path / "w")
    real_save, saves = checkpoint.save, []

    def save(mngr, state, meta):
        saves.append(meta["step"])
        if len(saves) == 1:
            return real_save(mngr, state, meta)
        # What Orbax leaves and raises when TensorStore finds the disk full.
        os.makedirs(os.path.join(workdir, "checkpoints", "2.orbax-checkpoint-tmp-7"))
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write 482 '
            "bytes to file 19: No space left on device [os_error_code='28'] "
            "[tensorstore_spec='{...}']"
        )

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(CheckpointNotWritten) as e:
        fit(_tiny_task(), workdir)
    assert " ".join(str(e.value).split()) == (
        f"cannot write a checkpoint in {workdir}/checkpoints (No space left on device): free "
        "some space there, or pick another folder, and rerun (step 1 is kept: a rerun resumes "
        "from it)"
    )
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_any_write(
    tmp_path, capsys, monkeypatch
):
    import shutil

    full = types.SimpleNamespace(total=2**21, used=2**21 - 1024, free=1024)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    monkeypatch.chdir(ROOT)
    argv = ["train.py", "--config", "configs/toy_dsm.py", "--workdir", str(tmp_path / "new")]
    assert run_cli(train.main, argv, flag_values=train.FLAGS) == 2
    assert_error_line(2, capsys.readouterr().err, "0.00 MiB free", "one checkpoint")
    assert os.listdir(tmp_path) == []


def test_an_os_error_is_one_line_naming_its_path(capsys):
    def main():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/x/.tmp-1", None, "/runs/x/a")

    assert run_cli(main, ["prog"], flag_values=_flags()) == 2
    assert capsys.readouterr().err == (
        "error: /runs/x/a: Is a directory: a folder stands where a file should be: move it "
        "away and rerun\n"
    )


def _flags():
    from absl import flags

    return flags.FlagValues()


def test_library_echoes_stay_off_the_terminal(capsys):
    """absl records and a library thread's traceback: dropped when the command fails, one
    warning line when it succeeds all the same."""

    def main(fail: bool):
        absl_logging.error("orbax: _SignalingThread.run() raised an exception")
        logging.getLogger("tensorstore").error("RESOURCE_EXHAUSTED")
        t = threading.Thread(target=importlib.import_module, args=("jldm_no_such_module",))
        t.start()
        t.join()
        if fail:
            raise UserError("the one line")

    assert run_cli(lambda: main(True), ["prog"], flag_values=_flags()) == 2
    assert capsys.readouterr().err == "error: the one line\n"
    assert run_cli(lambda: main(False), ["prog"], flag_values=_flags()) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: background work of a library failed")
    assert "ModuleNotFoundError: No module named 'jldm_no_such_module'" in err[0]


def test_ctrl_c_before_the_first_step_leaves_no_new_workdir(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "fit", interrupted)
    monkeypatch.chdir(ROOT)
    argv = ["train.py", "--config", "configs/toy_dsm.py", "--workdir", str(tmp_path / "new")]
    assert run_cli(train.main, argv, flag_values=train.FLAGS) == INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted by Ctrl-C: rerun the command to go on\n"
    assert os.listdir(tmp_path) == []


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    yield from fake_cloud.install(monkeypatch, tmp_path)


def test_a_cloud_workdir_without_its_filesystem_package_is_one_line(tmp_path, capsys, monkeypatch):
    from etils.epath import gpath

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.delitem(registry._registry, "gs", raising=False)
    missing = {"class": "jldm_no_gcsfs.GCSFileSystem", "err": "Please install gcsfs"}
    monkeypatch.setitem(registry.known_implementations, "gs", missing)
    argv = ["sample.py", "--workdir", "gs://bucket/run"]
    _cli(sample, argv, tmp_path, capsys, "cannot reach gs://bucket/run", "Please install gcsfs")


def test_a_cloud_workdir_out_of_reach_is_not_called_missing(cloud, tmp_path, capsys):
    from jldm.data.paths import write_text_atomic

    write_text_atomic("gs://bucket/run/config.json", tiny_config("/data").to_json())

    def down(self, path, **kwargs):
        raise ConnectionError("Cannot connect to host storage.googleapis.com:443")

    cloud.info = down
    argv = ["sample.py", "--workdir", "gs://bucket/run"]
    _cli(sample, argv, tmp_path / "cwd", capsys, "cannot reach gs://bucket/run", "Cannot connect")
