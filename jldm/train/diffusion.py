"""The diffusion task: the conditional UNet on images (or stage-1 latents) by its objective."""

import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jldm.build.model import build_model, downsample, init_params, sr_factor
from jldm.build.noise import build_schedule
from jldm.build.objectives import build_loss
from jldm.build.state import abstract_state, create_state, make_optimizer
from jldm.build.text import condition_fn
from jldm.eval import save_grid
from jldm.sampling.pipeline import generate
from jldm.sampling.run import Loaded, Stage1
from jldm.train.fit import Task
from jldm.train.inputs import array_batches
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, state_sharding
from jldm.train.step import make_train_step, make_update


def diffusion_task(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: tuple[np.ndarray, np.ndarray],
    stage1: Stage1 | None = None,
    meta: dict | None = None,
) -> Task:
    """The task of config on data = (inputs [N,H,W,C] in model space, labels [N]).

    stage1: the autoencoder of a latent run (its latents are the inputs); meta: extra JSON
    kept with every checkpoint.
    """
    t = config.train
    model = build_model(config)
    loss_fn = build_loss(config, model)
    mesh = make_mesh()
    check_batch(t.batch_size, mesh)
    tx = make_optimizer(t)
    init_fn = lambda k: init_params(model, config, k)
    shapes = abstract_state(init_fn, tx, config.seed)
    # Replicated, or split over the devices with train.shard_params (FSDP).
    shardings = state_sharding(shapes, mesh, t.get("shard_params", False))
    init = jax.jit(lambda: create_state(init_fn, tx, config.seed), out_shardings=shardings)
    update = make_update(loss_fn, tx, t.ema_decay, t.skip_nonfinite, shardings.params)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    images, labels = data
    inputs = array_batches(
        images,
        labels,
        config.seed,
        t.batch_size,
        t.get("steps_per_call", 1),
        batch_sharding(mesh, 1),
        condition_fn(config),
    )

    def finish(state) -> None:
        ema = state.ema_params
        if jax.process_count() > 1:  # a collective: every process takes part
            ema = multihost_utils.process_allgather(ema, tiled=True)
        if jax.process_index() == 0:
            ema = jax.device_get(ema)
            run = Loaded(config, model, ema, build_schedule(config), int(state.step), stage1)
            final_grid(run, workdir, images)

    return Task(
        name="train",
        section=t,
        shapes=abstract,
        init=init,
        step=make_train_step(update, mesh, shardings),
        inputs=inputs,
        finish=finish,
        meta=meta or {},
    )


def final_grid(run: Loaded, workdir: str, images: np.ndarray) -> None:
    """A grid of EMA samples, one row per class: WORKDIR/samples_final.png.

    A super-resolution run sharpens downsampled training images instead.
    """
    config = run.config
    s, d = config.sample, config.data
    labels = np.repeat(np.arange(d.num_classes), s.per_class)
    low_res, f = None, sr_factor(config)
    if f > 1:
        low_res = np.asarray(downsample(images[: len(labels)], f))
        labels = labels[: len(low_res)]
    x = generate(run, labels=labels, seed=config.seed, low_res=low_res)
    path = os.path.join(workdir, "samples_final.png")
    save_grid(x, path, ncols=s.per_class)
    print(f"final samples: {path}")
