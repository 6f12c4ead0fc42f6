"""Toy runs of jldm.train.toy: each kind of objective learns the exact score of a 2-D mixture,
annealed Langevin samples the mode weights, train.py runs a toy (resume: test_fit.py)."""

import importlib
import json
import os

import numpy as np
import pytest

from jldm.api import train as run
from jldm.errors import UserError
from tests.clitools import cli
from tests.tiny import apply_overrides, as_flags

# The configs' own model with fewer steps and draws. Compilation dominates the time; the runs
# that repeat a program (resume, CLI) get it from the persistent cache (tests/conftest.py).
SMALL = {
    "train.steps": 1500,
    "train.steps_per_call": 250,
    "train.log_every": 750,
    "train.checkpoint_every": 750,
    "eval.num": 1000,
    "eval.levels": 5,
    "sample.num": 500,
    "sample.steps": 100,
}


def small_config(name: str, **overrides):
    c = importlib.import_module(f"configs.toy_{name}").get_config()
    return apply_overrides(c, {**SMALL, **overrides})


def score_errors(workdir) -> tuple[float, float]:
    """(score error at init, score error of the EMA weights at the end) from metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return rows[0]["score_error"], rows[-1]["score_error_ema"]


# NCSN on a 4-mode mixture with weights 0.4/0.3/0.2/0.1; 2000 draws for the weights.
NCSN = {"train.steps": 3000, "sample.num": 2000}


@pytest.fixture(scope="module")
def ncsn_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy") / "ncsn")
    config = small_config("ncsn", **NCSN)
    assert run(config, workdir)
    return config, workdir


# Measured (init -> end, EMA weights): esm-energy 0.998 -> 0.00059 (1700x), sliced 1.03 ->
# 0.0104 (98x), vpsde 1.27 -> 0.0041 (310x). The bounds leave a factor of ~10 of margin.
@pytest.mark.parametrize(
    ("name", "overrides", "factor"),
    [
        ("esm", {"diffusion.parameterization": "energy"}, 100),
        ("sliced", {}, 10),
        ("vpsde", {}, 30),
    ],
    ids=["esm-energy", "sliced", "vpsde"],
)
def test_training_lowers_the_score_error(tmp_path, name, overrides, factor):
    workdir = str(tmp_path / name)
    assert run(small_config(name, **overrides), workdir)
    init, end = score_errors(workdir)
    assert end < init / factor, (init, end)


def test_ncsn_lowers_the_score_error_and_samples_the_mode_weights(ncsn_run):
    _, workdir = ncsn_run
    init, end = score_errors(workdir)
    # Measured 91.0 -> 0.0089 (10000x).
    assert end < init / 500, (init, end)
    data = np.load(os.path.join(workdir, "samples.npz"))
    # Measured [0.392, 0.306, 0.195, 0.107], largest gap 0.008 (0.014 after 1500 steps, 0.031
    # after 2000: the gap wanders with training). A weight's standard error here is <= 0.011.
    np.testing.assert_allclose(data["sampled_weights"], data["weights"], atol=0.05)
    assert data["x"].shape == (2000, 2)


def test_train_cli_runs_a_toy_config(tmp_path):
    workdir = str(tmp_path / "cli")
    # The esm-energy run's programs (same shapes), so the compilation cache serves them.
    overrides = {**SMALL, "train.steps": 250, "diffusion.parameterization": "energy"}
    proc = cli(
        "train.py", "--config", "configs/toy_esm.py", "--workdir", workdir, *as_flags(overrides)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "samples.npz", "samples.png", "checkpoints"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "score error" in proc.stdout and "mode weights" in proc.stdout


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"sample.sampler": "rk45"}, ["rk45", "not known"]),
        ({"data.weights": (1.0, 2.0)}, ["data.weights", "4 positive weights"]),
        ({"train.log_every": 100}, ["train.log_every", "multiple"]),
        ({"diffusion.sigma_min": 9.0}, ["sigma_min", "0 < sigma_min < sigma_max"]),
    ],
)
def test_bad_settings_are_one_line_user_errors(tmp_path, overrides, words):
    with pytest.raises(UserError) as e:
        run(small_config("ncsn", **overrides), str(tmp_path / "w"))
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)
    assert not os.path.exists(tmp_path / "w")
