"""A config file or override that cannot be read names its cause in one line, in-process:
a get_config() that raises (its file and line), a file without get_config(), a missing file or
a folder given with overrides, an override of a key the config lacks; and a run folder that is
a file is called a file, not a missing folder (jldm.load, jldm-compare)."""

import pytest

import train
from jldm.api import load
from jldm.cli import run_cli
from jldm.errors import UserError
from tests.clitools import assert_error_line
from tests.tiny import ROOT


def _snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _train(tmp_path, capsys, config: str, *extra: str, words=()):
    """train.py in-process on config: one error line holding words, nothing written."""
    before = _snapshot(tmp_path)
    argv = ["train.py", "--config", config, "--workdir", str(tmp_path / "w"), *extra]
    code = run_cli(train.main, argv, flag_values=train.FLAGS)
    assert_error_line(code, capsys.readouterr().err, *words)
    assert _snapshot(tmp_path) == before


def test_a_get_config_that_raises_is_named_by_its_file_and_line(tmp_path, capsys):
    bad = tmp_path / "raises.py"
    bad.write_text("def get_config():\n    raise ValueError('no such dataset')\n")
    _train(tmp_path, capsys, str(bad), words=(f"{bad}:2", "ValueError: no such dataset"))


def test_a_file_without_get_config(tmp_path, capsys):
    bad = tmp_path / "plain.py"
    bad.write_text("steps = 4\n")
    _train(tmp_path, capsys, str(bad), words=(str(bad), "defines no get_config()"))


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_a_config_path_that_is_no_file_with_overrides(tmp_path, capsys, what):
    path = tmp_path / "nope.py" if what == "missing" else tmp_path
    cause = "it does not exist" if what == "missing" else "it is a folder"
    words = (f"cannot read the config file {path}", cause)
    _train(tmp_path, capsys, str(path), "--config.train.steps=4", words=words)


@pytest.mark.parametrize(
    "override, key",
    [("--config.train.nosuch=1", "'nosuch'"), ("--config.nosection.x=1", "'nosection'")],
)
def test_an_override_of_a_key_the_config_lacks_names_the_flag(
    tmp_path, capsys, monkeypatch, override, key
):
    monkeypatch.chdir(ROOT)
    flag = override.split("=")[0]
    words = (flag, f"the config has no key {key}")
    _train(tmp_path, capsys, "configs/digits_demo.py", override, words=words)


def test_a_workdir_that_is_a_file_is_called_a_file(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("not a run")
    with pytest.raises(UserError, match="is a file, not a run's folder"):
        load(str(path))
    with pytest.raises(UserError, match="does not exist"):
        load(str(tmp_path / "nothing"))


def test_compare_calls_a_run_that_is_a_file_a_file(tmp_path, capsys):
    from jldm.scripts import compare

    path = tmp_path / "run.txt"
    path.write_text("not a run")
    before = _snapshot(tmp_path)
    argv = ["jldm-compare", str(path), "--out", str(tmp_path / "cmp")]
    code = run_cli(compare.main, argv, flag_values=compare.FLAGS, positional=True)
    assert_error_line(code, capsys.readouterr().err, str(path), "is a file, not a run's folder")
    assert _snapshot(tmp_path) == before
