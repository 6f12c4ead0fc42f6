"""A checkpoint records what it needs to be read: a config.json edited to another architecture or
objective is refused with a line naming the keys, by jldm.load, sample.py and a resumed run.

The runs here are written without training: a TrainState of zeros saved as train.py saves one
(checkpoint.manager of a workdir holding config.json), so no step is compiled.
"""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import pytest

import jldm
from jldm.build import unet_state_shapes
from jldm.build.model import build_model
from jldm.cli import run_cli
from jldm.errors import UserError
from jldm.runs import checkpoint, record
from jldm.runs.config_io import write_config
from jldm.scripts import sample
from tests.clitools import assert_error_line
from tests.tiny import apply_overrides, tiny_config

STEP = 2


def _save_zeros(workdir: str, shapes, step: int = STEP) -> None:
    """A checkpoint of zeros at step, written as the training loop writes one."""
    state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state = state.replace(step=jnp.asarray(step, state.step.dtype))
    mngr = checkpoint.manager(workdir)
    checkpoint.save(mngr, state, {"step": step, "data_step": step})
    mngr.wait_until_finished()


def _pixel_run(workdir: str, with_record: bool = True) -> None:
    config = tiny_config("unused")
    if with_record:
        write_config(workdir, config)
    _save_zeros(workdir, unet_state_shapes(config, build_model(config)))
    if not with_record:  # as a run written before records existed: config.json came first
        write_config(workdir, config)


def _edit(workdir: str, **changes) -> None:
    """Hand-edit WORKDIR/config.json: changes are {"section__key": value}."""
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        c = json.load(f)
    for name, value in changes.items():
        section, key = name.split("__")
        c[section][key] = value
    with open(path, "w") as f:
        json.dump(c, f)


def _files(root) -> dict:
    return {
        os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(root)
        for n in names
    }


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("record") / "run")
    _pixel_run(workdir)
    return workdir


@pytest.fixture
def run_copy(pixel, tmp_path):
    import shutil

    dst = str(tmp_path / "run")
    shutil.copytree(pixel, dst)
    return dst


def test_the_record_holds_the_reading_keys_and_not_the_free_ones(pixel):
    with open(os.path.join(pixel, "checkpoints", str(STEP), "meta", "metadata")) as f:
        stored = json.load(f)[record.RECORD]
    want = {
        "model.channels": 8,
        "model.channel_mult": [1],
        "diffusion.prediction": "eps",
        "diffusion.schedule": "cosine",
        "diffusion.objective": "ddpm",
        "diffusion.sigma_min": 0.01,
        "data.resolution": 8,
        "data.channels": 1,
    }
    assert {k: stored[k] for k in want} == want
    free = ("model.dtype", "model.remat", "diffusion.cond_drop", "data.data_dir", "data.threads")
    assert not any(k in stored for k in free)
    assert not any(k.split(".")[0] in ("sample", "train", "seed") for k in stored)


def test_free_keys_may_change_and_the_run_still_loads(run_copy):
    _edit(
        run_copy,
        sample__steps=7,
        train__steps=99,
        train__log_every=1,
        model__dtype="bfloat16",
        diffusion__cond_drop=0.3,
        data__data_dir="/elsewhere",
    )
    run = jldm.load(run_copy)
    assert run.step == STEP and run.config.sample.steps == 7


def test_another_prediction_and_schedule_are_refused_naming_both(run_copy, tmp_path, capsys):
    _edit(run_copy, diffusion__prediction="x0", diffusion__schedule="linear")
    with pytest.raises(UserError) as e:
        jldm.load(run_copy)
    line = str(e.value)
    for words in (
        f"{run_copy}/config.json disagrees with the checkpoint at step {STEP}",
        "diffusion.prediction (x0 here, eps in the checkpoint)",
        "diffusion.schedule (linear here, cosine in the checkpoint)",
        "put the checkpoint's values back into",
    ):
        assert words in line, line
    # sample.py: one line, exit 2, and nothing in the folder written or changed.
    before = _files(tmp_path)
    code = run_cli(sample.main, ["sample.py", f"--workdir={run_copy}"], flag_values=sample.FLAGS)
    assert_error_line(code, capsys.readouterr().err, "diffusion.prediction (x0 here, eps")
    assert _files(tmp_path) == before


def test_another_architecture_names_the_key_not_an_array_shape(run_copy):
    _edit(run_copy, model__channels=16)
    with pytest.raises(UserError, match=r"on model\.channels \(16 here, 8 in the checkpoint\)"):
        jldm.load(run_copy, step=STEP)  # an explicit step is checked too


def test_a_checkpoint_written_before_records_loads_unchecked(tmp_path):
    workdir = str(tmp_path / "old")
    _pixel_run(workdir, with_record=False)
    with open(os.path.join(workdir, "checkpoints", str(STEP), "meta", "metadata")) as f:
        assert record.RECORD not in json.load(f)
    _edit(workdir, diffusion__prediction="x0")  # nothing to compare it with
    assert jldm.load(workdir).config.diffusion.prediction == "x0"


def test_a_resumed_run_refuses_an_edited_config_and_moves_no_checkpoint(tmp_path):
    """train.py with a config that matches a hand-edited config.json: the checkpoint is not
    resumed under the new sigma range, and not set aside as unreadable either."""
    workdir = str(tmp_path / "toy")
    config = importlib.import_module("configs.toy_dsm").get_config()
    apply_overrides(config, {"train.steps": 4, "train.steps_per_call": 1})
    write_config(workdir, config)
    from jldm.train.toy import toy_task

    _save_zeros(workdir, toy_task(config, workdir).shapes)
    _edit(workdir, diffusion__sigma_max=9.0)
    config.diffusion.sigma_max = 9.0
    before = _files(tmp_path)
    with pytest.raises(UserError, match=r"diffusion\.sigma_max \(9\.0 here, 8\.0 in the checkp"):
        jldm.train(config, workdir)
    after = _files(tmp_path)
    # train.py holds the folder (lock) and writes its config (the same values) before resuming.
    for files in (before, after):
        files.pop("toy/lock", None)
        files["toy/config.json"] = json.loads(files["toy/config.json"])
    assert after == before


def test_a_stage1_folder_records_only_the_autoencoder(tmp_path):
    config = importlib.import_module("configs.digits_ldm").get_config()
    workdir = str(tmp_path / "ldm")
    write_config(workdir, config)
    run, stage1 = record.written_by(workdir), record.written_by(os.path.join(workdir, "stage1"))
    assert run.record["model.channels"] == 32 and run.record["stage1.latent_channels"] == 4
    assert set(stage1.record) == {
        "data.resolution",
        "data.channels",
        *(f"stage1.{k}" for k in ("channels", "channel_mult", "num_res_blocks")),
        *(f"stage1.{k}" for k in ("latent_channels", "norm_groups", "disc_channels")),
        "stage1.disc_layers",
    }
    assert record.written_by(str(tmp_path / "nothing")) is None


def test_compare_refuses_an_edited_run_before_sampling_any(pixel, run_copy, capsys, monkeypatch):
    from jldm import compare
    from jldm.scripts import compare as script

    monkeypatch.setattr(compare, "compare_one", lambda *a, **k: pytest.fail("sampled"))
    _edit(run_copy, diffusion__objective="edm")
    argv = ["jldm-compare", pixel, run_copy, f"--out={os.path.dirname(run_copy)}/t"]
    code = run_cli(script.main, argv, flag_values=script.FLAGS, positional=True)
    err = capsys.readouterr().err
    assert_error_line(code, err, f"{run_copy}/config.json disagrees", "diffusion.objective (edm")
    assert not os.path.exists(os.path.join(os.path.dirname(run_copy), "t.md"))


def test_a_step_given_as_text_loads_that_step_and_a_bad_one_is_named(run_copy):
    """jldm.load(W, '2') is step 2 (a notebook's or a flag's string), not 'step 2 is missing'."""
    assert jldm.load(run_copy, str(STEP)).step == STEP
    for bad in ("two", -1, 2.5, True):
        with pytest.raises(UserError, match="is no step number"):
            jldm.load(run_copy, bad)
