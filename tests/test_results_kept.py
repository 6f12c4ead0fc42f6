"""Nothing a run or a command wrote is lost: outputs are replaced atomically, --force moves the
old run aside whole, and a resumed run's metrics.jsonl is brought back to its checkpoint."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jldm.errors import UserError
from tests.tb_events import read_events
from tests.tiny import tiny_config

NO_SPACE = OSError(28, "No space left on device")


def _broken_savez(f, **arrays):
    """np.savez that writes part of the archive, then finds the disk full."""
    f.write(b"PK\x03\x04 part of an archive")
    raise NO_SPACE


def _state(folder) -> dict:
    """{name: bytes} of every file in folder (hidden ones included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_npz_write_keeps_the_previous_file_and_leaves_nothing(tmp_path, monkeypatch):
    from jldm.eval import fid
    from jldm.sampling.shards import save_npz, shard_path

    out = str(tmp_path / "out.npz")
    save_npz(out, images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.arange(2))
    save_npz(shard_path(str(tmp_path), 0), images=np.ones((2, 4, 4, 1), np.uint8))
    fid.save_stats_npz(str(tmp_path / "ref.npz"), fid.Stats(np.zeros(3), np.eye(3), None, 5))
    before = _state(tmp_path)
    monkeypatch.setattr(np, "savez", _broken_savez)
    for write in (
        lambda: save_npz(out, images=np.full((2, 4, 4, 1), 7, np.uint8), labels=np.arange(2)),
        lambda: save_npz(shard_path(str(tmp_path), 0), images=np.zeros((1, 4, 4, 1), np.uint8)),
        lambda: fid.save_stats_npz(
            str(tmp_path / "ref"), fid.Stats(np.ones(3), np.eye(3), None, 5)
        ),
    ):
        with pytest.raises(OSError, match="No space left"):
            write()
        assert _state(tmp_path) == before  # old bytes, no partial or temporary file
    monkeypatch.undo()
    with np.load(out) as z:
        assert (z["images"] == 0).all()
    with np.load(tmp_path / "ref.npz") as z:  # --save_stats appends .npz as np.savez did
        assert (z["mu"] == 0).all()


def test_a_failed_png_write_keeps_the_previous_grid_and_leaves_nothing(tmp_path, monkeypatch):
    from jldm.eval.grid import save_grid

    path = str(tmp_path / "out.png")
    save_grid(np.zeros((2, 4, 4, 1)), path, ncols=2)
    before = _state(tmp_path)
    real_save = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # the whole PNG is written, then the flush fails
        raise NO_SPACE

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_grid(np.ones((2, 4, 4, 1)), path, ncols=2)
    assert _state(tmp_path) == before
    monkeypatch.undo()
    save_grid(np.ones((2, 4, 4, 1)), path, ncols=2)
    assert np.asarray(Image.open(path)).max() == 255 and os.listdir(tmp_path) == ["out.png"]


def test_a_failed_table_write_keeps_the_previous_tables(tmp_path, monkeypatch):
    from jldm import compare

    out = str(tmp_path / "table")
    compare.write_tables(out, "| old |", [{"run": "old"}])
    before = _state(tmp_path)

    def full_disk(fd):
        raise NO_SPACE

    monkeypatch.setattr(os, "fsync", full_disk)  # the bytes were handed over; the flush fails
    with pytest.raises(UserError, match="cannot write .*table.md"):
        compare.write_tables(out, "| new |" * 1000, [{"run": "new"}])
    assert _state(tmp_path) == before


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    """A TFDS data_dir for the tiny digits runs of this module (prepared on first use)."""
    return str(tmp_path_factory.mktemp("tfds"))


def _records(workdir) -> list[dict]:
    text = (workdir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_rewind_keeps_whole_records_up_to_the_checkpoint(tmp_path, caplog):
    from jldm.train.metrics_log import rewind

    lines = [{"step": 0, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.25}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (tmp_path / "metrics.jsonl").write_text(text + 'oops\n{"step": 6, "lo')
    with caplog.at_level(logging.WARNING, logger="jldm"):
        rewind(str(tmp_path), 2)
    assert _records(tmp_path) == lines[:2]
    assert "metrics.jsonl:4 is no metrics record" in caplog.text
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    rewind(str(tmp_path), 0)  # no checkpoint: the run starts over
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_train_speed_skips_only_an_unfinished_last_line_and_names_a_bad_one(tmp_path):
    from jldm import compare

    good = "".join(json.dumps({"step": s, "steps_per_sec": s}) + "\n" for s in (1, 2, 3))
    (tmp_path / "metrics.jsonl").write_text(good + '{"step": 4, "steps_')
    assert compare.train_speed(str(tmp_path)) == 2.0
    (tmp_path / "metrics.jsonl").write_text(good + "not json\n" + good)
    with pytest.raises(UserError, match=r"metrics.jsonl:4 is no JSON record") as e:
        compare.train_speed(str(tmp_path))
    assert "\n" not in str(e.value)
    assert compare.train_speed(str(tmp_path / "none")) is None


def test_a_killed_run_resumes_with_one_record_per_logged_step(tmp_path, digits_dir):
    from jldm import api

    workdir = tmp_path / "run"
    assert api.train(tiny_config(digits_dir), str(workdir))
    first = _records(workdir)
    logged = [r["step"] for r in first]
    assert 2 in logged and 4 in logged
    # Killed after logging step 4 and before its checkpoint, in the middle of a later line.
    shutil.rmtree(workdir / "checkpoints" / "4")
    with open(workdir / "metrics.jsonl", "a") as f:
        for step in (3, 4, 5):
            f.write(json.dumps({"step": step, "steps_per_sec": -1.0}) + "\n")
        f.write('{"step": 6, "loss": 0.')
    tb_before = set(os.listdir(workdir / "tb"))

    assert api.train(tiny_config(digits_dir, **{"train.steps": 6}), str(workdir))
    records = _records(workdir)
    steps = [r["step"] for r in records]
    assert sorted(steps) == steps and len(set(steps)) == len(steps)
    assert [r for r in records if r["step"] <= 2] == [r for r in first if r["step"] <= 2]
    assert {2, 4, 6} <= set(steps) and all(r.get("steps_per_sec") != -1.0 for r in records)
    (new,) = set(os.listdir(workdir / "tb")) - tb_before
    starts = [e.step for e in read_events(workdir / "tb" / new) if e.HasField("session_log")]
    assert starts == [3]  # TensorBoard drops the earlier files' events of steps 3 and later

    # Killed after logging past the last checkpoint of a finished run: a rerun that finds the
    # run complete still brings the log back to it.
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "loss": 0.5}) + "\n" + '{"step": 8, "lo')
    assert api.train(tiny_config(digits_dir, **{"train.steps": 6}), str(workdir))
    assert _records(workdir) == records


def test_force_moves_the_whole_old_run_aside_as_a_loadable_run(tmp_path, digits_dir, caplog):
    from jldm import api

    workdir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="jldm")
    assert api.train(tiny_config(digits_dir), str(workdir))
    old_files = sorted(os.listdir(workdir))
    # The tiny config ends without the final grid (train.final_samples=False), and says so.
    assert "samples_final.png" not in old_files
    assert "no final samples (train.final_samples=False)" in caplog.text
    old_metrics = (workdir / "metrics.jsonl").read_bytes()
    old_config = (workdir / "config.json").read_bytes()
    old_shapes = _shapes(api.load(str(workdir)))
    wider = tiny_config(digits_dir, **{"model.channels": 16, "train.steps": 2})
    with pytest.raises(UserError, match="model.channels.*--force"):
        api.train(wider, str(workdir))

    assert api.train(wider, str(workdir), force=True)
    (kept,) = [p for p in workdir.iterdir() if p.name.startswith("replaced-")]
    assert f"kept in {kept}" in caplog.text
    assert sorted(os.listdir(kept)) == [n for n in old_files if n != "lock"]
    assert (kept / "metrics.jsonl").read_bytes() == old_metrics
    assert (kept / "config.json").read_bytes() == old_config
    old, new = api.load(str(kept)), api.load(str(workdir))
    assert (old.step, old.config.model.channels) == (4, 8)
    assert (new.step, new.config.model.channels) == (2, 16)
    assert _shapes(old) == old_shapes and _shapes(new) != old_shapes
    assert max(r["step"] for r in _records(workdir)) == 2  # only the new run's records
    assert len(_records(workdir)) < len(_records(kept))
    images = api.generate(old, labels=[0, 1], steps=2)
    assert images.shape == (2, 8, 8, 1)


def _shapes(run) -> list:
    """(path, shape) of every parameter of a loaded run."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(run.params)[0]
    return [(jax.tree_util.keystr(k), np.shape(v)) for k, v in flat]
