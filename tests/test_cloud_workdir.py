"""A workdir on a cloud path (gs://) end to end: train.py, sample.py and jldm.load keep the path
as given, and every file jldm writes there (config, metrics, event files, grids, arrays, moved
checkpoints) goes to the object store, readable back; nothing lands on the local disk.

The store is the in-memory gs:// of tests/fake_cloud.py. Orbax writes through TensorStore, which
that fake cannot reach, so the tests check the path the checkpoint manager is handed instead.
"""

import io
import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
from etils import epath
from PIL import Image

from jldm.cli import run_cli
from jldm.errors import UserError
from tests import fake_cloud
from tests.tiny import ROOT, tiny_config


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    """The fake gs:// filesystem class (tests.fake_cloud.install)."""
    yield from fake_cloud.install(monkeypatch, tmp_path)


class _Manager:
    """Stands in for orbax's CheckpointManager: records the folder it is given, holds no step."""

    made: list = []

    def __init__(self, directory, options=None):
        self.directory = directory
        _Manager.made.append(os.fspath(directory))

    def latest_step(self):
        return None


@pytest.fixture
def manager(monkeypatch):
    from jldm.runs import checkpoint

    _Manager.made = []
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", _Manager)
    return _Manager


def _read(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def test_paths_name_move_and_write_cloud_objects_like_local_files(cloud, tmp_path):
    from jldm.data import paths

    assert paths.dirname("gs://b/runs/x/samples") == "gs://b/runs/x"
    assert paths.dirname("gs://b/samples/") == "gs://b"
    assert paths.dirname("/data/x/samples") == "/data/x"
    for root in ("gs://bucket/p", str(tmp_path / "p")):
        paths.makedirs(paths.join(root, "a"))
        paths.write_text_atomic(paths.join(root, "a", "t.json"), '{"k": 1}')
        assert paths.read_text(paths.join(root, "a", "t.json")) == '{"k": 1}'
        paths.rename(paths.join(root, "a"), paths.join(root, "b"))
        assert not paths.exists(paths.join(root, "a"))
        assert paths.read_text(paths.join(root, "b", "t.json")) == '{"k": 1}'
    assert os.listdir(tmp_path / "p" / "b") == ["t.json"]  # no temporary file left behind
    assert paths.listdir("gs://bucket/p") == ["b"] and paths.listdir("gs://bucket/p/b") == [
        "t.json"
    ]


def test_config_json_is_written_read_and_guarded_in_a_cloud_workdir(cloud, caplog):
    from jldm.runs.config_io import read_config, write_config

    run = "gs://bucket/run"
    with pytest.raises(UserError, match="holds no jldm run"):
        read_config(run)
    write_config(run, tiny_config("/data"))
    assert json.loads(_read(f"{run}/config.json"))["model"]["channels"] == 8
    write_config(run, tiny_config("/data", **{"model.remat": True}))
    assert read_config(run).model.remat is True
    epath.Path(f"{run}/checkpoints/2/state").write_text("step 2")
    wider = tiny_config("/data", **{"model.channels": 16})
    with pytest.raises(UserError, match="model.channels"):
        write_config(run, wider)
    assert read_config(run).model.channels == 8  # the refused call wrote nothing

    caplog.set_level(logging.INFO, logger="jldm")
    write_config(run, wider, force=True)
    assert read_config(run).model.channels == 16
    (kept,) = [p for p in epath.Path(run).iterdir() if p.name.startswith("replaced-")]
    assert (kept / "checkpoints" / "2" / "state").read_text() == "step 2"
    assert read_config(str(kept)).model.channels == 8  # the old run, whole
    assert not epath.Path(f"{run}/checkpoints").exists()
    assert f"kept in {kept}" in caplog.text


def _steps_logged(run: str) -> list[dict]:
    return [json.loads(s) for s in _read(f"{run}/metrics.jsonl").splitlines()]


def _scalars(run: str) -> list[tuple]:
    """(step, tag, value) of every scalar in the event files of run/tb."""
    from tests.tb_events import read_events

    files = epath.Path(f"{run}/tb").iterdir()
    return [
        (e.step, v.tag, v.simple_value)
        for f in files
        for e in read_events(f)
        for v in e.summary.value
    ]


def test_metrics_lines_grow_across_flushes_and_reopening_on_a_cloud_workdir(cloud):
    from jldm.train.metrics_log import MetricWriter

    run = "gs://bucket/run"
    epath.Path(run).mkdir(parents=True)
    w = MetricWriter(run, flush_seconds=0.0)
    w.write(1, {"loss": 0.5})
    assert _steps_logged(run) == [{"step": 1, "loss": 0.5}]
    w.write(2, {"loss": float("nan")})
    assert _steps_logged(run) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}]
    w.close()
    assert (1, "loss", 0.5) in _scalars(run)  # the event file is an object in the store

    w = MetricWriter(run, flush_seconds=3600.0)  # a resumed run: the object's lines are kept
    w.write(3, {"loss": 0.25})  # a writer's first write is uploaded at once
    w.write(4, {"loss": 0.125})  # within flush_seconds: kept in memory until close
    assert [r["step"] for r in _steps_logged(run)] == [1, 2, 3]
    w.close()
    assert [r["step"] for r in _steps_logged(run)] == [1, 2, 3, 4]
    assert {(3, "loss", 0.25), (4, "loss", 0.125)} <= set(_scalars(run))


def test_save_grid_writes_a_png_object_that_reads_back(cloud):
    from jldm.eval.grid import make_grid, save_grid

    images = np.random.default_rng(0).uniform(size=(5, 4, 4, 3)).astype(np.float32)
    path = "gs://bucket/run/samples/step_0000002.png"
    assert save_grid(images, path, ncols=3, scale=2) == path
    back = np.asarray(Image.open(io.BytesIO(_read(path))))
    np.testing.assert_array_equal(back, make_grid(images, 3, scale=2))


def test_the_checkpoint_manager_gets_the_cloud_path_as_given(cloud, manager):
    from jldm.runs import checkpoint

    checkpoint.manager("gs://bucket/run/", read_only=True)
    checkpoint.manager("runs/x")
    assert manager.made == ["gs://bucket/run/checkpoints", os.path.abspath("runs/x/checkpoints")]


def test_unreadable_cloud_checkpoints_are_moved_aside_as_objects(cloud):
    from jldm.runs import checkpoint

    root = epath.Path("gs://bucket/run/checkpoints")
    (root / "7" / "state").write_text("bad bytes")
    (root / "corrupt-7" / "state").write_text("moved before")
    mngr = SimpleNamespace(directory=root, reload=lambda: None)
    moved = checkpoint._move_aside(mngr, [7])
    assert moved == ["gs://bucket/run/checkpoints/corrupt-7.2"]
    assert (root / "corrupt-7.2" / "state").read_text() == "bad bytes"
    assert (root / "corrupt-7" / "state").read_text() == "moved before"
    assert not (root / "7").exists()


def test_loading_a_cloud_run_checks_its_folders_and_hands_orbax_the_path(cloud, manager):
    from jldm.api import load
    from jldm.runs.config_io import write_config

    with pytest.raises(UserError, match="workdir gs://bucket/none does not exist"):
        load("gs://bucket/none")
    run = "gs://bucket/run"
    write_config(run, tiny_config("/data"))
    epath.Path(f"{run}/checkpoints").write_text("not a folder")
    with pytest.raises(UserError, match="is a file, not the run's checkpoint folder"):
        load(run)
    assert manager.made == []
    epath.Path(f"{run}/checkpoints").unlink()
    with pytest.raises(UserError, match=f"no checkpoint in {run}/checkpoints"):
        load(run)
    assert manager.made == [f"{run}/checkpoints"]


def test_train_py_keeps_a_gs_workdir_and_makes_a_local_one_absolute(cloud, monkeypatch):
    from jldm.scripts import train as script
    from jldm.train import entry

    seen = []
    monkeypatch.setattr(entry, "train", lambda config, workdir, force=False: seen.append(workdir))
    config = os.path.join(ROOT, "configs", "digits_ddpm.py")
    for workdir in ("gs://bucket/runs/x/", "runs/x"):
        argv = ["train.py", "--config", config, "--workdir", workdir]
        assert run_cli(script.main, argv, flag_values=script.FLAGS) == 0
    assert seen == ["gs://bucket/runs/x", os.path.abspath("runs/x")]


def _fake_run(monkeypatch, images: np.ndarray) -> list:
    """jldm.load and jldm.generate replaced: the tiny digits run at step 4, drawing images."""
    import jldm

    seen = []
    run = SimpleNamespace(config=tiny_config("/data"), step=4)
    monkeypatch.setattr(jldm, "load", lambda workdir, step=None: seen.append(workdir) or run)
    monkeypatch.setattr(jldm, "generate", lambda run, **kwargs: images)
    return seen


def test_sample_py_writes_its_grid_and_arrays_into_a_gs_workdir(cloud, monkeypatch, capsys):
    from jldm.eval.grid import make_grid, readable_scale
    from jldm.scripts import sample as script

    images = np.random.default_rng(1).uniform(size=(10, 8, 8, 1)).astype(np.float32)
    seen = _fake_run(monkeypatch, images)
    argv = ["sample.py", "--workdir", "gs://bucket/run/", "--num", "1", "--nometrics"]
    code = run_cli(script.main, argv, flag_values=script.FLAGS)
    assert code == 0, capsys.readouterr().err
    assert seen == ["gs://bucket/run"]
    assert "samples: gs://bucket/run/samples.png gs://bucket/run/samples.npz" in (
        capsys.readouterr().out
    )
    picture = np.asarray(Image.open(io.BytesIO(_read("gs://bucket/run/samples.png"))))
    np.testing.assert_array_equal(
        picture, make_grid(images, 1, scale=readable_scale(images))[..., 0]
    )
    with np.load(io.BytesIO(_read("gs://bucket/run/samples.npz"))) as arrays:
        np.testing.assert_array_equal(arrays["images"], images)
        np.testing.assert_array_equal(arrays["labels"], np.arange(10))


def test_sample_py_shards_go_to_a_gs_folder_as_given(cloud, monkeypatch, capsys):
    from jldm.sampling import shards
    from jldm.scripts import sample as script

    seen = _fake_run(monkeypatch, np.zeros((4, 8, 8, 1), np.float32))
    folders = []

    def fake_shards(run, folder, **kwargs):
        folders.append(folder)
        return shards.Written(2, 0, kwargs["num"], 0.5)

    monkeypatch.setattr(shards, "sample_shards", fake_shards)
    base = ["sample.py", "--workdir", "gs://bucket/run", "--batch_size", "4", "--num", "8"]
    for extra in ([], ["--out", "gs://bucket/fid/shards/"]):
        code = run_cli(script.main, base + extra, flag_values=script.FLAGS)
        assert code == 0, capsys.readouterr().err
    assert seen == ["gs://bucket/run"] * 2
    assert folders == ["gs://bucket/run/shards", "gs://bucket/fid/shards"]
    assert epath.Path("gs://bucket/fid/shards").is_dir()  # made by the write probe


def test_sample_py_reads_its_input_images_from_gs(cloud):
    from jldm.scripts.sample_flags import read_image

    pixels = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    epath.Path("gs://bucket/in/source.png").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, pixels / 255.0)
    epath.Path("gs://bucket/in/source.npy").write_bytes(buffer.getvalue())
    for name in ("source.png", "source.npy"):
        image = read_image(f"gs://bucket/in/{name}", "--source", 1)
        np.testing.assert_allclose(image, (pixels / 255.0)[..., None], atol=1e-6)
    with pytest.raises(UserError, match="cannot read --mask gs://bucket/in/none.png"):
        read_image("gs://bucket/in/none.png", "--mask", None)
