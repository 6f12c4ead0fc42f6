"""The one training loop: resume, fused jitted steps, NaN policy, signals, logs, checkpoints.

Every kind of training (pixel or latent diffusion, the stage-1 autoencoder, toy densities) is a
Task: its state, its step, its inputs and its metrics. The loop owns everything else, so every
task resumes, stops on SIGTERM/SIGINT, refuses NaN and checkpoints the same way.
"""

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jldm.build import ranges
from jldm.build.state import TrainState, learning_rate
from jldm.errors import UserError
from jldm.runs import checkpoint
from jldm.train.feeder import Prefetcher
from jldm.train.metrics_log import MetricWriter, rewind
from jldm.train.saves import checkpoint_writes
from jldm.train.signals import stop_requests
from jldm.train.step import check_steps_per_call, mean_metrics
from jldm.train.writers import Writer, WriterFactory

logger = logging.getLogger(__name__)

# With skip_nonfinite: the run stops, after a checkpoint, at a log step where more than this
# fraction of its steps so far were skipped (section.max_skipped_fraction overrides it).
MAX_SKIPPED_FRACTION = 0.1


class TrainingDiverged(UserError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Task:
    """One kind of training, as the loop sees it.

    section: the config section of its schedule (steps, log_every, checkpoint_every,
    keep_checkpoints, and optionally steps_per_call, skip_nonfinite), named `name` in messages.
    shapes: the abstract TrainState (with shardings) a checkpoint restores into; init() a fresh
    one. step(state, inputs) -> (state, metrics [k]) runs k = steps_per_call fused steps and
    reports metrics["nonfinite"] per step; inputs(start, stop) yields one input per call, from
    a background thread. evaluate(state, step) -> extra scalars on log steps (and step 0);
    finish(state) runs once training is complete; meta goes with every checkpoint. watch(state,
    step) -> Watched runs every section.sample_every steps (0 or absent: never): sample grids
    and a quick quality figure while the run trains.
    """

    name: str
    section: ml_collections.ConfigDict
    shapes: TrainState
    init: Callable[[], TrainState]
    step: Callable[[TrainState, Any], tuple[TrainState, dict]]
    inputs: Callable[[int, int], Iterator]
    evaluate: Callable[[TrainState, int], dict] | None = None
    finish: Callable[[TrainState], None] | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    show: str = "loss"  # the metric shown beside the progress bar
    watch: Callable[[TrainState, int], "Watched"] | None = None
    describe: str = ""  # logged once as TensorBoard text (the config)


class Watched(NamedTuple):
    """What a task shows of a run in progress: scalars and images [H, W, C] uint8 by name."""

    scalars: dict
    images: dict


class Result(NamedTuple):
    """complete: train.steps are done (False: stopped by SIGTERM, after a checkpoint; SIGINT
    raises KeyboardInterrupt after it)."""

    complete: bool
    state: TrainState


def check_section(section: ml_collections.ConfigDict, name: str) -> None:
    """A schedule section's settings, checked before any work is done."""
    ranges.check_section(section, name)
    check_steps_per_call(section, name)


def final_samples(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether a finished run draws its final grid (train.final_samples); logs it when not."""
    if config.train.get("final_samples", True):
        return True
    if jax.process_index() == 0:
        logger.info(
            f"{workdir}: no final samples (train.final_samples=False): sample.py draws them"
        )
    return False


def fit(task: Task, workdir: str, writer: WriterFactory | Writer | None = None) -> Result:
    """Train task in workdir, resuming from its latest readable checkpoint. writer: where the
    metrics go besides metrics.jsonl (see MetricWriter; None: TensorBoard)."""
    sec = task.section
    check_section(sec, task.name)
    k, total = sec.get("steps_per_call", 1), sec.steps
    skip = sec.get("skip_nonfinite", False)
    max_skipped = sec.get("max_skipped_fraction", MAX_SKIPPED_FRACTION)
    main = jax.process_index() == 0
    mngr = checkpoint.manager(workdir, sec.keep_checkpoints)
    if mngr.latest_step() is not None:
        # An unreadable latest step falls back to the one before; it is moved aside, not deleted.
        state, _ = checkpoint.restore_latest(mngr, task.shapes, move_aside=True)
    else:
        state = task.init()
    start = int(state.step)
    if start >= total:
        if main:
            rewind(workdir, start)  # records a killed run logged past its last checkpoint
            logger.info(f"{workdir}: already trained to step {start} ({task.name}.steps={total})")
        return Result(True, state)
    if start % k:
        raise UserError(
            f"the run resumes at step {start}, not a multiple of {task.name}.steps_per_call={k}: "
            "use the steps_per_call it was trained with"
        )
    writer = MetricWriter(workdir, enabled=main, resume_step=start, writer=writer)
    if task.describe:
        writer.text(start, "config", task.describe)
    if start == 0 and task.evaluate is not None:
        writer.write(0, task.evaluate(state, 0))
    lr = learning_rate(sec) if "lr" in sec and "warmup_steps" in sec else None
    every = sec.get("sample_every", 0)
    feeder = Prefetcher(task.inputs(start, total))
    bar = tqdm(total=total, initial=start, unit="step", disable=not main, dynamic_ncols=True)
    bar.set_description(task.name)
    t_last, s_last = time.perf_counter(), start
    skipped, done, stop_skipping = 0, start, False
    unchecked = None  # (first step, metrics) of the call whose NaN/Inf flags are not read yet

    def count_nonfinite(first: int, metrics: dict) -> int:
        """The call's skipped steps; TrainingDiverged if it had one and skipping is off."""
        bad = np.asarray(jax.device_get(metrics["nonfinite"]))
        if bad.any() and not skip:
            with checkpoint_writes(mngr):
                mngr.wait_until_finished()
            last = mngr.latest_step()
            kept = (
                "no checkpoint was written yet"
                if last is None
                else f"the last good checkpoint (step {last}) is kept"
            )
            raise TrainingDiverged(
                f"loss or gradients became NaN/Inf at step "
                f"{first + int(bad.argmax()) + 1}; {kept}: lower {task.name}.lr, or set "
                f"{task.name}.skip_nonfinite=True to skip such steps"
            )
        return int(bad.sum())

    try:
        with stop_requests() as stop:
            for step in range(start, total, k):
                state, metrics = task.step(state, feeder.next())
                done = step + k
                bar.update(k)
                # The previous call's flags are read only now, with this call already queued,
                # so the host's wait never leaves the devices idle between steps.
                if unchecked is not None:
                    skipped += count_nonfinite(*unchecked)
                unchecked = (step, metrics)
                log_now = done % sec.log_every == 0 or done == total
                watch_now = every and task.watch is not None and done % every == 0
                save_now = done % sec.checkpoint_every == 0 or done == total or stop
                if log_now or watch_now or save_now:
                    skipped += count_nonfinite(*unchecked)  # before anything reads or saves
                    unchecked = None
                if log_now:
                    scalars = mean_metrics(metrics)
                    now = time.perf_counter()
                    scalars["steps_per_sec"] = (done - s_last) / (now - t_last)
                    scalars["skipped_steps"] = skipped
                    if lr is not None:
                        scalars["lr"] = float(lr(done))
                    if task.evaluate is not None:
                        scalars.update(task.evaluate(state, done))
                    t_last, s_last = now, done
                    writer.write(done, scalars)
                    if task.show in scalars:
                        bar.set_postfix({task.show: f"{scalars[task.show]:.4f}"})
                    stop_skipping = skipped > max_skipped * (done - start)
                if watch_now:
                    seen = task.watch(state, done)
                    if seen.scalars:
                        writer.write(done, seen.scalars)
                    for tag, image in seen.images.items():
                        writer.image(done, tag, image)
                if save_now or stop_skipping:
                    meta = {**task.meta, "step": done, "data_step": done}
                    with checkpoint_writes(mngr):
                        checkpoint.save(mngr, state, meta)
                if stop or stop_skipping:
                    break
    finally:
        try:
            with checkpoint_writes(mngr):
                mngr.wait_until_finished()  # every checkpoint written before the loop ends
        finally:
            feeder.close()
            bar.close()
            writer.close()
    ran = done - start
    if stop_skipping:
        raise TrainingDiverged(
            f"{skipped} of {ran} steps had NaN/Inf loss or gradients and were skipped, more than "
            f"{task.name}.max_skipped_fraction={max_skipped}: lower {task.name}.lr (the "
            f"checkpoint of step {done} is kept), or raise {task.name}.max_skipped_fraction"
        )
    if skipped and main:
        logger.info(
            f"skipped {skipped} of {ran} steps ({skipped / ran:.1%}) with NaN/Inf loss or gradients"
        )
    if stop:
        name = signal.Signals(stop[0]).name
        if done < total:
            if main:
                logger.info(f"stopped by {name} at step {done}: checkpoint saved, rerun to resume")
            if stop[0] == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C: the checkpoint is written, the command exits 130
            return Result(False, state)
        if main:  # every step is done: a rerun would find the run complete
            logger.info(
                f"stopped by {name} after the last step ({done}): checkpoint saved, the final "
                "samples not drawn (sample.py draws them)"
            )
        return Result(True, state)
    if task.finish is not None:
        task.finish(state)
    return Result(True, state)
