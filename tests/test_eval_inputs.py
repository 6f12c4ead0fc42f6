"""jldm-fid and jldm-compare check their inputs before the work, and never print a non-finite
figure: each bad input is one `error:` line, exit 2, with nothing written.

No Inception pass runs here: every refusal comes before the weights are read (the weights file
is a few junk bytes, which would fail differently if it were), and the final guards are reached
with the Inception and the comparison rows stubbed.
"""

import os
import tempfile
import types

import numpy as np
import pytest

from jldm.cli import run_cli
from jldm.errors import UserError
from jldm.eval import fid as fid_lib
from jldm.scripts import compare as compare_script
from jldm.scripts import fid as fid_script
from tests.clitools import assert_error_line
from tests.tiny import tiny_config

F = 2048


def _files(root) -> dict:
    return {
        os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(root)
        for n in names
    }


@pytest.fixture
def sets(tmp_path):
    """weights (junk), good uint8 samples, good statistics; paths in tmp_path."""
    paths = types.SimpleNamespace(
        weights=str(tmp_path / "w.pth"),
        samples=str(tmp_path / "s.npz"),
        ref=str(tmp_path / "r.npz"),
    )
    with open(paths.weights, "wb") as f:
        f.write(b"not weights")
    rng = np.random.default_rng(0)
    np.savez(paths.samples, images=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))
    np.savez(paths.ref, mu=np.zeros(F), sigma=np.eye(F))
    return paths


def _fid(capsys, tmp_path, *args: str) -> str:
    """Run jldm-fid in-process; assert exit 2 and tmp_path unchanged; -> the error line."""
    before = _files(tmp_path)
    code = run_cli(fid_script.main, ["jldm-fid", *args], fid_script.FLAGS, positional=True)
    err = capsys.readouterr().err
    assert_error_line(code, err)
    assert _files(tmp_path) == before
    return err.strip()


def test_reference_statistics_holding_nan_are_refused_not_printed(sets, tmp_path, capsys):
    mu = np.zeros(F)
    mu[7] = np.nan
    np.savez(sets.ref, mu=mu, sigma=np.eye(F))
    line = _fid(capsys, tmp_path, sets.samples, sets.ref, f"--weights={sets.weights}")
    assert line == f"error: {sets.ref}: mu holds 1 NaN or Inf values: compute the statistics " + (
        "again (--save_stats) from finite images"
    )
    np.savez(sets.ref, mu=np.zeros(F), sigma=np.full((F, F), np.inf))
    assert "sigma holds 4194304 NaN or Inf" in _fid(
        capsys, tmp_path, sets.samples, sets.ref, f"--weights={sets.weights}"
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A data_dir holding the digits dataset, prepared."""
    from jldm.data import Dataset, open_split

    folder = str(tmp_path_factory.mktemp("data"))
    open_split(Dataset("digits", folder), "test")
    return folder


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("no_such_dataset:test", "no_such_dataset"),
        ("digits:valid", "split 'valid' not in dataset 'digits': pick one of test, train"),
        ("fashion_mnist:test", "nowhere"),
    ],
)
def test_a_wrong_dataset_reference_is_refused_before_the_weights_are_read(
    sets, tmp_path, data_dir, capsys, monkeypatch, ref, words
):
    from jldm.convert import inception

    read = []
    monkeypatch.setattr(inception, "load_inception", lambda w: read.append(w) or 1 / 0)
    flags = [f"--data_dir={data_dir}", f"--fashion_dir={tmp_path}/nowhere"]
    line = _fid(capsys, tmp_path, sets.samples, f"--ref={ref}", f"--weights={sets.weights}", *flags)
    assert words in line
    assert read == []


def test_a_nan_pixel_is_refused_before_the_inception_pass(sets, tmp_path, capsys):
    x = np.full((4, 8, 8, 3), 0.5, np.float32)
    x[2, 3, 4, 1] = np.nan
    np.savez(sets.samples, images=x)
    line = _fid(capsys, tmp_path, sets.samples, sets.ref, f"--weights={sets.weights}")
    assert "holds NaN or Inf pixels in 1 of 4 images (the first is image 2)" in line
    with pytest.raises(UserError, match="NaN or Inf pixels"):  # the library's own entry too
        fid_lib.to_unit_images(x)
    x[2, 3, 4, 1] = 1.5
    np.savez(sets.samples, images=x)
    assert "ranges over [0.5, 1.5]" in _fid(
        capsys, tmp_path, sets.samples, sets.ref, f"--weights={sets.weights}"
    )


def test_a_truncated_or_damaged_shard_is_one_line_naming_it(sets, tmp_path, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    images = np.zeros((3, 8, 8, 1), np.uint8)
    for i in range(3):
        np.savez(folder / f"shard_{i:05d}.npz", images=images, labels=np.arange(3))
    cut = folder / "shard_00001.npz"
    cut.write_bytes(cut.read_bytes()[:150])  # a write that stopped part way
    line = _fid(capsys, tmp_path, str(folder), sets.ref, f"--weights={sets.weights}")
    assert line.startswith(f"error: {cut} cannot be read as .npz (BadZipFile: ")
    assert "write it again, or move it out of the set" in line
    # A member whose bytes were damaged in place: its header reads, its data does not.
    np.savez(cut, images=np.full((3, 8, 8, 1), 7, np.uint8))
    raw = bytearray(cut.read_bytes())
    at = raw.index(bytes([7] * 64))
    raw[at : at + 4] = b"\x00\x01\x02\x03"
    cut.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"cannot be read as \.npz \(BadZipFile: Bad CRC-32"):
        fid_lib.load_set(str(cut))


def test_shard_folders_and_files_of_the_wrong_kind(sets, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.savez(folder / "a.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    np.savez(folder / "b.npz", mu=np.zeros(F), sigma=np.eye(F))
    args = (sets.ref, f"--weights={sets.weights}")
    assert "b.npz holds statistics: a folder must hold image shards" in _fid(
        capsys, tmp_path, str(folder), *args
    )
    np.savez(sets.samples, images=np.zeros((4, 8, 8, 2), np.uint8))
    assert "has shape (4, 8, 8, 2): FID needs images [N, H, W, 1 or 3]" in _fid(
        capsys, tmp_path, sets.samples, *args
    )
    np.savez(sets.samples, images=np.zeros((1, 8, 8, 1), np.uint8))
    assert "holds 1 image(s): FID's covariance needs at least 2" in _fid(
        capsys, tmp_path, sets.samples, *args
    )


def test_save_stats_is_checked_before_the_work(sets, tmp_path, capsys, monkeypatch):
    args = (sets.samples, sets.ref, f"--weights={sets.weights}")
    line = _fid(capsys, tmp_path, *args, f"--save_stats={tmp_path}/none/st.npz")
    assert f"the folder {tmp_path}/none does not exist: create it first" in line
    line = _fid(capsys, tmp_path, *args, f"--save_stats={sets.weights}/st.npz")
    assert f"{sets.weights} is a file, not a folder" in line
    # np.savez appends .npz: the file it would replace is the one checked.
    stem = sets.samples[: -len(".npz")]
    line = _fid(capsys, tmp_path, *args, f"--save_stats={stem}")
    assert f"--save_stats {stem} (written as {sets.samples}) exists" in line

    def no_write(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_write)  # root ignores a folder's mode bits
    line = _fid(capsys, tmp_path, *args, f"--save_stats={tmp_path}/st.npz")
    assert f"is not writable (Permission denied in {tmp_path})" in line


def test_a_non_finite_result_is_one_line_and_writes_no_statistics(
    sets, tmp_path, capsys, monkeypatch
):
    import jldm.convert.inception as inception

    np.savez(sets.ref, images=np.zeros((3, 8, 8, 1), np.uint8))
    monkeypatch.setattr(inception, "load_inception", lambda w: (None, None))
    good = fid_lib.Stats(np.zeros(F), np.eye(F), None, 4)
    monkeypatch.setattr(fid_lib, "set_stats", lambda *a: good)
    monkeypatch.setattr(fid_lib, "fid_between", lambda a, b: float("nan"))
    args = (sets.samples, sets.ref, f"--weights={sets.weights}", f"--save_stats={tmp_path}/o")
    assert "the FID came out nan from finite statistics" in _fid(capsys, tmp_path, *args)
    bad = fid_lib.Stats(np.full(F, np.nan), np.eye(F), None, 4)
    monkeypatch.setattr(fid_lib, "set_stats", lambda *a: bad)
    line = _fid(capsys, tmp_path, *args)
    assert f"the Inception features of {sets.samples} are not finite" in line


def test_quality_figures_refuse_non_finite_samples():
    from jldm.eval.quality import score_samples

    x = np.zeros((5, 8, 8, 1), np.float32)
    x[[1, 3]] = np.inf
    with pytest.raises(UserError, match="2 of 5 samples hold NaN or Inf values"):
        score_samples(types.SimpleNamespace(classifier=None), x)


def _compare(capsys, tmp_path, *args: str) -> str:
    before = _files(tmp_path)
    code = run_cli(
        compare_script.main, ["jldm-compare", *args], compare_script.FLAGS, positional=True
    )
    err = capsys.readouterr().err
    assert_error_line(code, err)
    assert _files(tmp_path) == before
    return err.strip()


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("--bpd_tol=-1", "--bpd_tol=-1.0 must be in (0, 1)"),
        ("--bpd_tol=nan", "--bpd_tol=nan must be in (0, 1)"),
        ("--bpd_terms=1", "--bpd_terms=1: give 0 (all T terms) or >= 2"),
        ("--bpd_max_steps=0", "--bpd_max_steps=0 must be >= 1"),
        ("--bpd_images=-5", "--bpd_images=-5 must be >= 0"),
        ("--iwae_samples=0", "--iwae_samples=0 must be >= 1"),
        ("--guidance=inf", "--guidance=inf must be a finite number"),
        ("--samplers=ddim,eulr", "--samplers: sampler 'eulr' is not known: use one of"),
        ("--out=cmp/", "--out='cmp/' is a prefix of file names"),
        ("--out=nowhere/cmp", "nowhere does not exist: create it first"),
    ],
)
def test_compare_flags_are_checked_before_any_run_is_read(
    flag, words, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    run.mkdir()  # holds no run: its check would be the next refusal
    monkeypatch.chdir(tmp_path)
    assert words in _compare(capsys, tmp_path, str(run), flag)


def test_compare_checks_every_run_before_the_first_samples(tmp_path, capsys, monkeypatch):
    from jldm import compare

    monkeypatch.setattr(compare, "compare_one", lambda *a, **k: pytest.fail("sampled"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _compare(capsys, tmp_path, str(empty), f"--out={tmp_path}/t")
    assert f"{empty} holds no jldm run (no config.json)" in line


def test_compare_refuses_a_non_finite_figure_and_writes_no_table(tmp_path, capsys, monkeypatch):
    from jldm import compare
    from jldm.runs import load

    continuous = tiny_config("/unused", **{"diffusion.objective": "vpsde"})  # --nfe 200 fits
    monkeypatch.setattr(load, "check_run", lambda w: continuous)
    row = {"run": "r", "sampler": "ddim", "steps": 10, "frechet": 3.0, "bits_per_dim": np.nan}
    monkeypatch.setattr(compare, "compare_one", lambda *a, **k: dict(row))
    out = f"--out={tmp_path}/t"
    line = _compare(capsys, tmp_path, str(tmp_path), out)
    assert "run r (ddim, 10 steps): bits_per_dim came out nan, which is not a result" in line
    assert "lower --bpd_tol, give --bpd_steps, or skip bits/dim with --bpd_images=0" in line
    row.update(bits_per_dim=1.0, frechet=float("inf"))
    line = _compare(capsys, tmp_path, str(tmp_path), out)
    assert "frechet came out inf" in line and "look at them with sample.py" in line


def test_a_diverged_grid_setting_is_a_marked_row_and_the_others_are_still_made(
    tmp_path, capsys, monkeypatch
):
    import json

    from jldm import compare
    from jldm.runs import load
    from tests.test_value_checks import _run

    run = tmp_path / "r"
    run.mkdir()
    monkeypatch.setattr(load, "check_run", lambda w: _run().config)
    monkeypatch.setattr(compare.api, "load", lambda w, step=None: _run())
    monkeypatch.setattr(compare, "real_row", lambda config, per_class: None)
    monkeypatch.setattr(compare.api, "make_generator", lambda run, cond, **k: k)
    nan, inf = [("ddim", 1)], [("euler", 2)]  # samples NaN; finite samples, Frechet Inf

    def timed(gen, seed):
        setting = (gen["sampler"], gen["steps"])
        value = np.nan if setting in nan else 0.25 if setting in inf else 0.5
        return np.full((10, 8, 8, 1), value, np.float32), 1.0, 0.5

    def quality(images, labels, config):
        assert np.isfinite(images).all()
        frechet = float("inf") if images.max() == 0.25 else 3.0
        return {"class_accuracy": 0.9, "frechet": frechet, "kid": 0.1, "precision": 0.5,
                "recall": 0.4}  # fmt: skip

    monkeypatch.setattr(compare, "timed", timed)
    monkeypatch.setattr(compare, "quality", quality)
    args = ["jldm-compare", str(run), "--grid", "--samplers=ddim,euler", "--budgets=2,4",
            "--bpd_images=0", "--per_class=1", f"--out={tmp_path}/t"]  # fmt: skip
    code = run_cli(compare_script.main, args, compare_script.FLAGS, positional=True)
    err = capsys.readouterr().err
    assert_error_line(code, err, "run r (ddim, 1 steps); run r (euler, 2 steps)", "diverged")
    rows = [json.loads(line) for line in open(tmp_path / "t.jsonl")]
    made = {(r["sampler"], r["steps"]): r for r in rows if r["table"] == "grid"}
    assert sorted(made) == [("ddim", 1), ("ddim", 2), ("euler", 1), ("euler", 2)]
    for setting, r in made.items():
        assert r.get("diverged", False) == (setting in nan + inf)
        assert r.get("frechet") == (None if setting in nan + inf else 3.0)
    table = (tmp_path / "t.md").read_text()
    assert "nan" not in table.lower() and "inf" not in table.lower()
    (row,) = [line for line in table.splitlines() if "| ddim | 1 |" in line]
    assert row.count("| diverged ") == 5
    (row,) = [line for line in table.splitlines() if "| ddim | 2 |" in line]
    assert "| 3.00 |" in row and "diverged" not in row
