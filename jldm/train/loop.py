"""The training loop: data -> fused jitted steps -> logs, checkpoints, a final sample grid."""

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
from jldm.train.conditions import condition_fn
from jldm.train.config_io import write_config
from jldm.train.factory import build_loss, build_model, downsample, is_latent, sr_factor
from jldm.train.metrics_log import MetricWriter
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, state_sharding, to_global
from jldm.train.signals import stop_requests
from jldm.train.state import create_state, make_optimizer
from jldm.train.step import check_steps_per_call, make_train_step, mean_metrics


def load_training_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """config.data's train split: images [N,R,R,C] in [-1, 1] and labels [N] int32."""
    d = config.data
    split = load_split(d.name, "train", d.data_dir, d.fashion_dir)
    if split.images.shape[-1] != d.channels or split.num_classes != d.num_classes:
        raise UserError(
            f"dataset {d.name!r} has {split.images.shape[-1]} channels and {split.num_classes} "
            f"classes: set data.channels and data.num_classes to match"
        )
    return preprocess(split.images, d.resolution), split.labels.astype(np.int32)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Settings the loop relies on, checked before any work is done."""
    check_steps_per_call(config.train)


class _Feeder:
    """Background thread that gathers and places the next batches while the device computes.

    The rows for step s depend only on (seed, s), so a resumed run sees the same data.
    """

    def __init__(self, images, labels, config, sharding, start, stop, cond_fn=None):
        self.images, self.labels, self.cond_fn = images, labels, cond_fn
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
        labels = self.labels[idx]
        if self.cond_fn is not None:
            labels = self.cond_fn(step, labels)
        return {
            "image": to_global(self.images[idx], self.sharding),
            "label": to_global(labels, self.sharding),
        }

    def _run(self, start: int, stop: int) -> None:
        for step in range(start, stop, self.k):
            self.queue.put(self._chunk(step))

    def next(self) -> dict:
        return self.queue.get()


class TrainingDiverged(UserError):
    """The loss or gradients became NaN/Inf; the last good checkpoint is kept."""


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    force: bool = False,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    meta: dict | None = None,
) -> bool:
    """Train config in workdir, resuming from its latest checkpoint.

    data: (inputs [N,H,W,C] in model space, labels [N]) to train on instead of config.data's
    dataset (latent diffusion passes its scaled latents); meta: extra JSON kept with every
    checkpoint. A latent diffusion config runs both of its stages (jldm.train.ldm).

    Returns True when train.steps are done, False when stopped early by SIGTERM/SIGINT (after
    writing a checkpoint). Raises TrainingDiverged on a NaN/Inf step unless
    train.skip_nonfinite, without writing the poisoned state.
    """
    check_config(config)
    if is_latent(config) and data is None:
        from jldm.train import ldm

        return ldm.run(config, workdir, force)
    model = build_model(config)
    loss_fn = build_loss(config, model)
    mesh = make_mesh()
    check_batch(config.train.batch_size, mesh)
    if data is None:
        data = load_training_images(config)
    main = jax.process_index() == 0
    if main:
        write_config(workdir, config, force)

    tx = make_optimizer(config.train)
    shapes = api.abstract_state(config, model)
    # Replicated, or split over the devices with train.shard_params (FSDP).
    shardings = state_sharding(shapes, mesh, config.train.get("shard_params", False))
    init = jax.jit(
        lambda: create_state(lambda k: api.init_params(model, config, k), tx, config.seed),
        out_shardings=shardings,
    )
    mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
    if mngr.latest_step() is not None:
        abstract = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
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

    images, labels = data
    skip = config.train.skip_nonfinite
    train_step = make_train_step(loss_fn, tx, config.train.ema_decay, mesh, skip, shardings)
    feeder = _Feeder(
        images, labels, config, batch_sharding(mesh, 1), start, total, condition_fn(config)
    )
    writer = MetricWriter(workdir, enabled=main)
    k = config.train.steps_per_call
    bar = tqdm(total=total, initial=start, unit="step", disable=not main, dynamic_ncols=True)
    t_last, s_last = time.perf_counter(), start
    skipped, done = 0, start
    with stop_requests() as stop:
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
                checkpoint.save(mngr, state, {**(meta or {}), "step": done, "data_step": done})
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
        _final_grid(config, workdir, images)
    return True


def _final_grid(config, workdir: str, images: np.ndarray) -> None:
    """A grid of EMA samples from the saved run, one row per class: WORKDIR/samples_final.png.

    A super-resolution run sharpens downsampled training images instead.
    """
    s, d = config.sample, config.data
    loaded = api.load(workdir)
    labels = np.repeat(np.arange(d.num_classes), s.per_class)
    low_res = None
    if sr_factor(config) > 1:
        low_res = np.asarray(downsample(images[: len(labels)], sr_factor(config)))
        labels = labels[: len(low_res)]
    x = api.generate(
        loaded, labels, s.sampler, s.steps, s.guidance, config.seed, s.eta, low_res=low_res
    )
    path = os.path.join(workdir, "samples_final.png")
    save_grid(to_unit(x), path, ncols=s.per_class)
    print(f"final samples: {path}")
