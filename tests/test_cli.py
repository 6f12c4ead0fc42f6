"""train.py and sample.py as a user runs them: outputs on success, one-line errors (exit 2)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.clitools import assert_user_error, cli, train_args
from tests.tiny import ROOT


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run through train.py, shared by the sampling tests."""
    root = tmp_path_factory.mktemp("cli")
    data_dir, workdir = str(root / "tfds"), str(root / "run")
    proc = cli(*train_args(workdir, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir, workdir


def test_train_writes_config_checkpoints_logs_and_a_grid(trained):
    _, workdir = trained
    for name in ("config.json", "metrics.jsonl", "samples_final.png", "tb"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_sample_writes_grid_and_npz_and_prints_quality(trained, tmp_path):
    _, workdir = trained
    out = str(tmp_path / "s")
    proc = cli(
        "sample.py",
        "--workdir",
        workdir,
        "--num",
        "2",
        "--classes",
        "3,7",
        "--steps",
        "3",
        "--guidance",
        "1.5",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out + ".npz")
    assert data["images"].shape == (4, 8, 8, 1)
    assert 0.0 <= data["images"].min() and data["images"].max() <= 1.0
    np.testing.assert_array_equal(data["labels"], [3, 3, 7, 7])
    assert os.path.getsize(out + ".png") > 0
    assert "class_accuracy" in proc.stdout and "frechet" in proc.stdout


def test_sampling_is_reproducible_given_the_seed(trained, tmp_path):
    _, workdir = trained
    outs = []
    for i, seed in enumerate(("5", "5", "6")):
        out = str(tmp_path / f"s{i}")
        proc = cli(
            "sample.py",
            "--workdir",
            workdir,
            "--num",
            "1",
            "--classes",
            "1",
            "--steps",
            "2",
            "--seed",
            seed,
            "--out",
            out,
            "--nometrics",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(np.load(out + ".npz")["images"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0] - outs[2]).max() > 1e-3


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--config.train.nonexistent=1"], ["nonexistent"]),
        (["--config.train.steps=many"], ["steps"]),
        (["--config.data.name=mnist"], ["mnist", "not prepared"]),
        (["--config.train.batch_size=6"], ["batch_size", "divisible"]),
        (["--config.data.resolution=9"], ["resolution", "divisible"]),
        (["--config.model.dtype=float8"], ["dtype"]),
    ],
)
def test_train_user_errors(tmp_path, extra, words):
    proc = cli(*train_args(tmp_path / "w", tmp_path / "tfds", *extra))
    assert_user_error(proc, *words)


def test_a_later_config_override_replaces_an_earlier_one():
    """Tuples too: ml_collections alone would concatenate (1, 2) and (1, 3) into (1, 2, 1, 3)."""
    show = (
        "from absl import flags; from ml_collections import config_flags; "
        "from jldm.cli import run_main; config_flags.DEFINE_config_file('config'); "
        "c = lambda: flags.FLAGS.config; "
        "run_main(lambda: print(c().model.channel_mult, c().train.steps))"
    )
    proc = cli(
        "-c",
        show,
        "--config",
        "configs/digits_ddpm.py",
        "--config.model.channel_mult=(1,2)",
        "--config.train.steps=5",
        "--config.model.channel_mult=(1,3)",
        "--config.train.steps=7",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(1,", "3)", "7"]


def test_train_refuses_a_workdir_of_another_architecture(trained, tmp_path):
    data_dir, workdir = trained
    before = open(os.path.join(workdir, "config.json")).read()
    proc = cli(*train_args(workdir, data_dir, "--config.model.channels=16"))
    assert_user_error(proc, "model.channels", "--force")
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_sample_user_errors(trained, tmp_path):
    _, workdir = trained
    assert_user_error(cli("sample.py", "--workdir", str(tmp_path / "nope")), "does not exist")
    assert not os.path.exists(tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    assert_user_error(cli("sample.py", "--workdir", str(tmp_path / "empty")), "config.json")
    assert_user_error(cli("sample.py", "--workdir", workdir, "--step", "3"), "step 3")
    assert_user_error(cli("sample.py", "--workdir", workdir, "--classes", "12"), "classes")
    assert_user_error(cli("sample.py", "--workdir", workdir, "--sampler", "euler"), "sampler")
    assert_user_error(cli("sample.py", "--workdir", workdir, "--steps", "5000"), "steps=5000")
    assert_user_error(cli("sample.py", "--workdir", workdir, "--out", "/proc/jldm/s"), "--out")


def test_sigterm_writes_a_checkpoint_and_exits_zero(trained, tmp_path):
    data_dir, _ = trained
    workdir = tmp_path / "w"
    args = [
        sys.executable,
        *train_args(
            workdir,
            data_dir,
            "--config.train.steps=100000",
            "--config.train.checkpoint_every=50000",
            "--config.train.log_every=1",
        ),
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = [s for s in out.splitlines() if s.startswith("stopped by SIGTERM")]
    assert len(line) == 1, out
    step = int(line[0].split("at step ")[1].split(":")[0])
    assert step >= 3
    assert os.listdir(workdir / "checkpoints") == [str(step)]
