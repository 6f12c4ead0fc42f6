"""The training loop: data -> fused jitted steps -> logs, checkpoints, a final sample grid."""

import contextlib
import os
import queue
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jldm import api
from jldm.data import batches_for, load_split, preprocess, to_unit
from jldm.errors import UserError
from jldm.eval import save_grid
from jldm.train import checkpoint
from jldm.train.config_io import write_config
from jldm.train.factory import build_loss, build_model
from jldm.train.metrics_log import MetricWriter
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, replicated, to_global
from jldm.train.state import create_state, make_optimizer
from jldm.train.step import make_train_step, mean_metrics


def check_config(config: ml_collections.ConfigDict) -> None:
    """Settings the loop relies on, checked before any work is done."""
    t = config.train
    k = t.steps_per_call
    if k < 1:
        raise UserError(f"train.steps_per_call={k} must be >= 1")
    for name in ("steps", "checkpoint_every", "log_every"):
        if getattr(t, name) % k:
            raise UserError(
                f"train.{name}={getattr(t, name)} is not a multiple of train.steps_per_call={k}: "
                "make it one"
            )


class _Feeder:
    """Background thread that gathers and places the next batches while the device computes.

    The rows for step s depend only on (seed, s), so a resumed run sees the same data.
    """

    def __init__(self, images, labels, config, sharding, start, stop):
        self.images, self.labels = images, labels
        self.seed, self.k = config.seed, config.train.steps_per_call
        self.batch = config.train.batch_size
        self.sharding = sharding
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, args=(start, stop), daemon=True)
        self.thread.start()

    def _chunk(self, step: int) -> dict:
        idx = batches_for(
            self.seed,
            step,
            self.k,
            self.batch,
            len(self.images),
            jax.process_index(),
            jax.process_count(),
        )
        return {
            "image": to_global(self.images[idx], self.sharding),
            "label": to_global(self.labels[idx], self.sharding),
        }

    def _run(self, start: int, stop: int) -> None:
        for step in range(start, stop, self.k):
            self.queue.put(self._chunk(step))

    def next(self) -> dict:
        return self.queue.get()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingDiverged(UserError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is kept."""


@contextlib.contextmanager
def _stop_requests():
    """Record SIGTERM/SIGINT instead of dying, so the loop can checkpoint and exit cleanly."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    old = {s: signal.signal(s, lambda n, _: received.append(n)) for s in _STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(config: ml_collections.ConfigDict, workdir: str, force: bool = False) -> bool:
    """Train config in workdir, resuming from its latest checkpoint.

    Returns True when train.steps are done, False when stopped early by SIGTERM/SIGINT (after
    writing a checkpoint). Raises TrainingDiverged on a NaN/Inf step unless
    train.skip_nonfinite, without writing the poisoned state.
    """
    check_config(config)
    model = build_model(config)
    loss_fn = build_loss(config, model)
    mesh = make_mesh()
    check_batch(config.train.batch_size, mesh)
    d = config.data
    split = load_split(d.name, "train", d.data_dir, d.fashion_dir)
    if split.images.shape[-1] != d.channels or split.num_classes != d.num_classes:
        raise UserError(
            f"dataset {d.name!r} has {split.images.shape[-1]} channels and {split.num_classes} "
            f"classes: set data.channels and data.num_classes to match"
        )
    main = jax.process_index() == 0
    if main:
        write_config(workdir, config, force)

    tx = make_optimizer(config.train)
    rep = replicated(mesh)
    init = jax.jit(
        lambda: create_state(lambda k: api.init_params(model, config, k), tx, config.seed),
        out_shardings=rep,
    )
    mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
    if mngr.latest_step() is not None:
        abstract = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
            api.abstract_state(config, model),
        )
        # An unreadable latest step falls back to the one before; it is moved aside, not deleted.
        state, _ = checkpoint.restore_latest(mngr, abstract, move_aside=True)
    else:
        state = init()
    start, total = int(state.step), config.train.steps
    if start >= total:
        if main:
            print(f"{workdir}: already trained to step {start} (train.steps={total})")
        return True

    images = preprocess(split.images, d.resolution)
    labels = split.labels.astype(np.int32)
    skip = config.train.skip_nonfinite
    train_step = make_train_step(loss_fn, tx, config.train.ema_decay, mesh, skip)
    feeder = _Feeder(images, labels, config, batch_sharding(mesh, 1), start, total)
    writer = MetricWriter(workdir, enabled=main)
    k = config.train.steps_per_call
    bar = tqdm(total=total, initial=start, unit="step", disable=not main, dynamic_ncols=True)
    t_last, s_last = time.perf_counter(), start
    skipped, done = 0, start
    with _stop_requests() as stop:
        for step in range(start, total, k):
            state, metrics = train_step(state, feeder.next())
            done = step + k
            bar.update(k)
            bad = np.asarray(jax.device_get(metrics["nonfinite"]))
            if bad.any() and not skip:
                bar.close()
                last = mngr.latest_step()
                raise TrainingDiverged(
                    f"loss or gradients became NaN/Inf at step {step + int(bad.argmax()) + 1}; "
                    f"the last good checkpoint (step {last}) is kept: lower train.lr, or set "
                    "train.skip_nonfinite=True to skip such steps"
                )
            skipped += int(bad.sum())
            if done % config.train.log_every == 0 or done == total:
                scalars = mean_metrics(metrics)
                now = time.perf_counter()
                scalars["steps_per_sec"] = (done - s_last) / (now - t_last)
                scalars["skipped_steps"] = skipped
                t_last, s_last = now, done
                writer.write(done, scalars)
                bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if done % config.train.checkpoint_every == 0 or done == total or stop:
                checkpoint.save(mngr, state, {"step": done, "data_step": done})
            if stop:
                break
    bar.close()
    writer.close()
    if skipped and main:
        print(f"skipped {skipped} steps with NaN/Inf loss or gradients")
    if stop:
        if main:
            name = signal.Signals(stop[0]).name
            print(f"stopped by {name} at step {done}: checkpoint saved, rerun to resume")
        return False
    if main:
        _final_grid(config, model, state, workdir)
    return True


def _final_grid(config, model, state, workdir: str) -> None:
    """A grid of EMA samples, one row per class, as WORKDIR/samples_final.png."""
    s, d = config.sample, config.data
    loaded = api.Loaded(
        config, model, jax.device_get(state.ema_params), api.build_schedule(config), int(state.step)
    )
    labels = np.repeat(np.arange(d.num_classes), s.per_class)
    x = api.generate(loaded, labels, s.sampler, s.steps, s.guidance, config.seed, s.eta)
    path = os.path.join(workdir, "samples_final.png")
    save_grid(to_unit(x), path, ncols=s.per_class)
    print(f"final samples: {path}")
