"""A config lacking a section or a key is the same one-line UserError through jldm.train as the
`error:` line of train.py (jldm.train.entry holds the check for both), with nothing written."""

import os

import pytest

import jldm
import train
from jldm.cli import run_cli
from jldm.errors import UserError
from tests.clitools import assert_error_line
from tests.tiny import ROOT, tiny_config

_CONFIG = """import sys
sys.path.insert(0, {root!r})
from tests.tiny import tiny_config


def get_config():
    c = tiny_config({data!r})
    section, _, key = {drop!r}.partition(".")
    del (c[section] if key else c)[key or section]
    return c
"""


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("train", "the config has no 'train' section: add config.train = ml_collections"),
        ("train.batch_size", "the config has no key 'batch_size' that this run reads: add it"),
        ("diffusion.objective", "the config has no key 'objective' that this run reads: add it"),
        ("sample.sampler", "the config has no key 'sampler' that this run reads: add it"),
    ],
)
def test_a_config_lacking_a_section_or_key_is_one_line_through_the_api(
    tmp_path, capsys, drop, message
):
    config = tiny_config(str(tmp_path / "tfds"))
    section, _, key = drop.partition(".")
    del (config[section] if key else config)[key or section]
    with pytest.raises(UserError) as e:
        jldm.train(config, str(tmp_path / "w"))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []

    path = tmp_path / "lacking.py"
    path.write_text(_CONFIG.format(root=ROOT, data=str(tmp_path / "tfds"), drop=drop))
    argv = ["train.py", "--config", str(path), "--workdir", str(tmp_path / "w")]
    code = run_cli(train.main, argv, flag_values=train.FLAGS)
    err = capsys.readouterr().err
    assert_error_line(code, err)
    assert err.endswith(f"{e.value}\n")
    assert os.listdir(tmp_path) == ["lacking.py"]


def test_a_get_config_returning_a_dict_is_one_line_through_the_api(tmp_path):
    with pytest.raises(UserError, match="the config is a dict, not an ml_collections.Config"):
        jldm.train(tiny_config(str(tmp_path / "tfds")).to_dict(), str(tmp_path / "w"))
    assert os.listdir(tmp_path) == []
