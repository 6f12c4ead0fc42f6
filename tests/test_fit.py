"""One loop, one reliability policy: every task (pixel diffusion, stage-1 autoencoder, latent
diffusion, toy densities, the VAE) stops cleanly on SIGTERM and resumes bit for bit, and refuses
or skips NaN steps keeping its last good checkpoint. (A real SIGKILL and a real SIGTERM from
outside are in test_reliability.py and test_cli.py.)"""

import dataclasses
import importlib
import json
import logging
import os
import shutil
import signal
import threading
from typing import NamedTuple

import jax
import numpy as np
import pytest

from jldm.diffusion.toy import GaussianMixture
from jldm.runs import checkpoint
from jldm.train import ldm, toy
from jldm.train.autoencoder import stage1_task
from jldm.train.diffusion import diffusion_task
from jldm.train.fit import Task, TrainingDiverged, fit
from jldm.train.inputs import load_training_images
from jldm.train.toy import toy_task
from jldm.train.vae import vae_task
from tests.test_ldm import tiny_ldm
from tests.test_vae_run import tiny_vae
from tests.tiny import tiny_config

real_density = toy.build_density

KINDS = ["pixel", "stage1", "latent", "toy", "vae"]
# The NaN policy is the loop's; the steps that report NaN (and keep their state when skipping)
# are three: the image update (pixel; latent and vae share it), stage 1's and the toy's.
NAN_KINDS = ("pixel", "stage1", "toy")
# Two steps, a checkpoint after each: a stop, a NaN or a resume at step 1 of 2 (the toy, which
# fuses two steps per call, runs four).
SCHEDULE = {"steps": 2, "checkpoint_every": 1, "log_every": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fit")


@pytest.fixture(scope="module")
def finished_stage1(root):
    """A finished stage 1 that the latent case reuses (stage1.workdir)."""
    config = tiny_ldm(str(root / "tfds"))
    config.stage1.perceptual_weight = 0.0  # as in _config: its perceptual net adds nothing here
    folder = str(root / "stage1")
    images, labels = load_training_images(config)
    assert fit(stage1_task(config, folder, images, labels), folder).complete
    return folder


def _config(kind: str, root, stage1_folder: str | None, **schedule):
    sched = {**SCHEDULE, **schedule}
    data_dir = str(root / "tfds")
    if kind == "toy":
        c = importlib.import_module("configs.toy_dsm").get_config()
        # Two steps fused per call: a resume must land on the same chunk boundaries.
        c.train.steps_per_call, c.train.batch_size = 2, 64
        sched.update(steps=4, checkpoint_every=2, log_every=2)
        c.eval.num, c.eval.levels, c.sample.num, c.sample.steps = 64, 2, 16, 2
        section = c.train
    elif kind == "pixel":
        c = tiny_config(data_dir)
        section = c.train
    elif kind == "vae":
        c = tiny_vae(data_dir)
        c.vae.eval_images = 0  # its evaluation is not what these tests check: skip its compile
        section = c.train
    else:
        c = tiny_ldm(data_dir)
        c.stage1.workdir = stage1_folder or ""
        # Class labels instead of captions, no perceptual net: their compiles add nothing here.
        c.model.conditioning = "class"
        c.stage1.perceptual_weight = 0.0
        section = c.stage1 if kind == "stage1" else c.train
    for k, v in sched.items():
        section[k] = v
    return c


def _task(kind, config, workdir):
    if kind == "toy":
        return toy_task(config, workdir)
    if kind == "pixel":
        return diffusion_task(config, workdir, load_training_images(config))
    if kind == "vae":
        return vae_task(config, workdir, load_training_images(config))
    return stage1_task(config, workdir, *load_training_images(config))


def _run(kind, config, workdir, wrap, tasks=None):
    """Fit the task of kind in workdir; wrap(task) changes the task before it runs.

    tasks: built tasks by kind and skip_nonfinite (the settings that change the step), reused
    by the fits of one test (their grids are off: the workdir a task was built for is not read),
    so its compiled step serves them all; the latent kind builds its task inside fit_latent."""
    os.makedirs(workdir, exist_ok=True)
    if kind == "latent":
        real = ldm.fit
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ldm, "fit", lambda task, w, *writer: real(wrap(task), w, *writer))
            return ldm.fit_latent(config, workdir, load_training_images(config))
    tasks = {} if tasks is None else tasks
    section = config.stage1 if kind == "stage1" else config.train
    key = (kind, bool(section.get("skip_nonfinite", False)))
    if key not in tasks:
        tasks[key] = _task(kind, config, workdir)
    return fit(wrap(tasks[key]), workdir)


def _no_finish(task):
    """The final grid or samples are not what these tests check: skip their compiles."""
    return dataclasses.replace(task, finish=None)


def _signal_after(n: int):
    """A wrap that raises SIGTERM in this process after n calls of the task's step."""

    def wrap(task):
        real, calls = task.step, []

        def step(state, inputs):
            out = real(state, inputs)
            calls.append(1)
            if len(calls) == n:
                signal.raise_signal(signal.SIGTERM)
            return out

        return _no_finish(dataclasses.replace(task, step=step))

    return wrap


def _nan_inputs(task):
    """NaN images in every batch (the toy draws its data on the device: see the test)."""
    real = task.inputs

    def inputs(start, stop):
        for batch in real(start, stop):
            yield dict(batch, image=batch["image"] * np.nan)

    return _no_finish(dataclasses.replace(task, inputs=inputs))


class _NaNDraws(GaussianMixture):
    """A toy density whose training draws are NaN (its means and plots stay finite)."""

    def sample(self, key, n):
        return super().sample(key, n) * np.nan


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _no_constant(name: str):
    raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")


def _steps(workdir) -> list[int]:
    return checkpoint.manager(workdir, read_only=True).all_steps()


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_stops_resumes_bit_exactly_and_refuses_or_skips_nan(
    kind, root, finished_stage1, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="jldm")
    config = _config(kind, root, finished_stage1)
    section = config.stage1 if kind == "stage1" else config.train
    total, k = section.steps, section.get("steps_per_call", 1)
    half = total // 2
    a, b, c = (str(tmp_path / n) for n in "abc")
    tasks = {}
    straight = _run(kind, config, a, _no_finish, tasks)
    assert straight.complete and int(straight.state.step) == total and _steps(a) == [half, total]

    # SIGTERM halfway: a checkpoint of that step, and False (not complete).
    stopped = _run(kind, config, b, _signal_after(half // k), tasks)
    assert not stopped.complete and int(stopped.state.step) == half and _steps(b) == [half]
    assert f"stopped by SIGTERM at step {half}: checkpoint saved" in caplog.text
    shutil.copytree(b, c)
    if kind in NAN_KINDS:
        _nan_refused_or_skipped(kind, config, section, b, stopped, half, total, monkeypatch, tasks)
        assert f"skipped {total - half} of {total - half} steps" in caplog.text

    # The copy taken at the stop resumes to exactly the uninterrupted run.
    resumed = _run(kind, config, c, _no_finish, tasks)
    assert resumed.complete and _steps(c) == [half, total]
    _same(straight.state, resumed.state)


def test_a_stop_after_the_last_step_is_a_complete_run(root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jldm")
    config = _config("toy", root, None)
    total, k = config.train.steps, config.train.steps_per_call
    done = _run("toy", config, str(tmp_path / "w"), _signal_after(total // k))
    assert done.complete and int(done.state.step) == total
    assert f"stopped by SIGTERM after the last step ({total}): checkpoint saved" in caplog.text
    assert "rerun to resume" not in caplog.text


def test_ctrl_c_writes_the_checkpoint_then_interrupts(root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jldm")
    config = _config("toy", root, None)
    half = config.train.steps // 2
    workdir = str(tmp_path / "w")

    def wrap(task):  # Ctrl-C during the first call (two fused steps)
        real = task.step

        def step(state, inputs):
            signal.raise_signal(signal.SIGINT)
            return real(state, inputs)

        return _no_finish(dataclasses.replace(task, step=step))

    with pytest.raises(KeyboardInterrupt):
        _run("toy", config, workdir, wrap)
    assert _steps(workdir) == [half]
    assert f"stopped by SIGINT at step {half}: checkpoint saved" in caplog.text


def _nan_refused_or_skipped(kind, config, section, b, stopped, half, total, monkeypatch, tasks):
    """From the stop's checkpoint in b: a NaN step ends the run keeping that checkpoint; with
    skip_nonfinite the NaN steps are skipped, counted and logged as null."""
    # A NaN step after it ends the run and keeps the last good checkpoint.
    poison = _nan_inputs
    if kind == "toy":
        monkeypatch.setattr(toy, "build_density", lambda cfg: _NaNDraws(*real_density(cfg)))
        poison = _no_finish
        tasks = {}  # its NaN draws are the task's own: built anew, and not kept
    words = rf"step {half + 1}; the last good checkpoint \(step {half}\)"
    with pytest.raises(TrainingDiverged, match=words):
        _run(kind, config, b, poison, tasks)
    assert _steps(b) == [half]
    # ... or, with skip_nonfinite, every NaN step is skipped and counted, up to a fraction.
    section.skip_nonfinite = True
    if kind == "pixel":  # the fraction is the loop's: one kind shows it
        d = os.path.join(os.path.dirname(b), "d")
        shutil.copytree(b, d)
        words = rf"{total - half} of {total - half} steps .*max_skipped_fraction=0.1"
        with pytest.raises(TrainingDiverged, match=words):
            _run(kind, config, d, poison, tasks)
        assert _steps(d) == [half, total]  # the skipped steps' checkpoint is kept
    section.max_skipped_fraction = 1.0
    skipped = _run(kind, config, b, poison, tasks)
    assert skipped.complete and int(skipped.state.step) == total
    _same(skipped.state.params, stopped.state.params)
    with open(os.path.join(b, "metrics.jsonl")) as f:
        rows = [json.loads(line, parse_constant=_no_constant) for line in f]
    logged = [r for r in rows if "skipped_steps" in r]
    assert logged[-1]["skipped_steps"] == total - half
    if kind != "toy":  # the toy logs the mean loss of its chunk's steps
        assert logged[-1]["loss"] is None  # NaN, as strict JSON
    monkeypatch.undo()
    section.skip_nonfinite, section.max_skipped_fraction = False, 0.1


def test_an_error_in_the_input_thread_ends_the_run_with_its_message(root, tmp_path):
    """The input pipeline runs in a background thread: its exception reaches the loop, which
    ends with it (no wait on an empty queue), and no thread is left behind."""
    config = _config("toy", root, None)

    def failing(task):
        real = task.inputs

        def inputs(start, stop):
            it = real(start, stop)
            yield next(it)
            raise ValueError("batch 2 is unreadable")

        return _no_finish(dataclasses.replace(task, inputs=inputs))

    threads = set(threading.enumerate())
    with pytest.raises(ValueError, match="batch 2 is unreadable"):
        _run("toy", config, str(tmp_path / "w"), failing)
    left = [t for t in set(threading.enumerate()) - threads if t.name.startswith("Thread")]
    assert not any(t.is_alive() for t in left), left


class _Count(NamedTuple):
    step: jax.Array


def _counting_task(section, bad_steps: set[int]):
    """A task whose state is its step count and whose steps `bad_steps` (1-based) report NaN."""

    def step(state, _):
        bad = int(state.step) + 1 in bad_steps
        return _Count(state.step + 1), {"nonfinite": np.array([bad]), "loss": np.array([1.0])}

    return Task(
        "train",
        section,
        _Count(jax.ShapeDtypeStruct((), np.int32)),
        init=lambda: _Count(jax.numpy.zeros((), np.int32)),
        step=step,
        inputs=lambda start, stop: iter(range(start, stop)),
    )


def test_nan_flags_read_one_step_later_name_the_right_step(tmp_path):
    """Between log and checkpoint steps the loop reads a step's NaN/Inf flags after queueing the
    next one: the error still names the step that failed, and nothing is saved; skipped steps
    between log steps are all counted."""
    from ml_collections import ConfigDict

    # Step 3 is neither a log nor a checkpoint step: its flags are read while step 4 runs. Step 4
    # is both: its own flags are read before its checkpoint. Either way step 2's is the last.
    section = ConfigDict({"steps": 8, "log_every": 4, "checkpoint_every": 2, "keep_checkpoints": 4})
    for bad in (3, 4):
        refused = str(tmp_path / f"refused{bad}")
        words = rf"at step {bad}; the last good checkpoint \(step 2\) is kept"
        with pytest.raises(TrainingDiverged, match=words):
            fit(_counting_task(section, {bad}), refused)
        assert _steps(refused) == [2]

    section.skip_nonfinite, section.max_skipped_fraction = True, 1.0
    result = fit(_counting_task(section, {2, 3, 6}), str(tmp_path / "skipped"))
    assert result.complete and int(result.state.step) == 8
    with open(tmp_path / "skipped" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f if "skipped_steps" in line]
    assert [(r["step"], r["skipped_steps"]) for r in logged] == [(4, 2), (8, 3)]
