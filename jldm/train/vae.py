"""The VAE task: a convolutional VAE trained by the ELBO through the one training loop.

The training images go in as 8-bit pixel values at the model's resolution (the rendering the
bits/dim are measured on); each step's key draws their dequantisation or binarisation noise
and the posterior draws, so a resumed run computes exactly the same steps. The KL's weight
(warm-up) is read from the step inside the jitted update. On log steps the EMA params' ELBO
bits/dim on vae.eval_images test images is logged (marginalised over the classes for a
conditional run); the run ends with a grid of prior samples, WORKDIR/samples_final.png.
"""

import logging
import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jldm.build.state import create_state, make_optimizer
from jldm.build.vae import build_elbo_loss, build_vae, init_vae, vae_state_shapes
from jldm.data import to_unit
from jldm.eval import save_grid
from jldm.runs.load import Loaded
from jldm.sampling.vae import generate
from jldm.sampling.vae_likelihood import eval_pixels, has_density, make_likelihood
from jldm.train.fit import Task, final_samples
from jldm.train.inputs import array_batches
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, state_sharding
from jldm.train.step import make_train_step, make_update

logger = logging.getLogger(__name__)


def pixel_values(images: np.ndarray) -> np.ndarray:
    """Model-space images [N,R,R,C] in [-1, 1] -> 8-bit values [N,R,R,C] uint8."""
    return np.round(to_unit(np.asarray(images, np.float32)) * 255.0).astype(np.uint8)


def _with_step(update):
    """The update with the state's step in the batch (the KL warm-up reads it)."""
    return lambda state, batch: update(state, dict(batch, step=state.step))


def host_params(tree):
    """The (replicated) params as host arrays; a collective in a multi-process run."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _evaluator(config: ml_collections.ConfigDict, model):
    """evaluate(state, step) -> {"test_elbo_bpd": ...} on a fixed test subset, or None."""
    num = config.vae.eval_images
    if num == 0 or not has_density(config):
        return None
    pixels, _ = eval_pixels(config, num)
    score = make_likelihood(config, model, 1)

    def evaluate(state, step: int) -> dict:
        # On one device: a replicated copy on every device would only repeat the work.
        elbo, _ = score(host_params(state.ema_params), pixels, None, config.seed)
        return {"test_elbo_bpd": float(np.mean(elbo))}

    return evaluate


def vae_task(
    config: ml_collections.ConfigDict, workdir: str, data: tuple[np.ndarray, np.ndarray]
) -> Task:
    """The VAE task of config on data = (images [N,R,R,C] in [-1, 1], labels [N])."""
    t = config.train
    model = build_vae(config)
    mesh = make_mesh()
    check_batch(t.batch_size, mesh)
    tx = make_optimizer(t)
    init_fn = lambda k: init_vae(model, config, k)
    shapes = vae_state_shapes(config, model)
    shardings = state_sharding(shapes, mesh, t.get("shard_params", False))
    init = jax.jit(lambda: create_state(init_fn, tx, config.seed), out_shardings=shardings)
    update = make_update(
        build_elbo_loss(config, model), tx, t.ema_decay, t.skip_nonfinite, shardings.params
    )
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    images, labels = data
    inputs = array_batches(
        pixel_values(images),
        labels,
        config.seed,
        t.batch_size,
        t.get("steps_per_call", 1),
        batch_sharding(mesh, 1),
    )

    def finish(state) -> None:
        if not final_samples(config, workdir):
            return
        ema = host_params(state.ema_params)  # every process takes part
        if jax.process_index() == 0:
            final_grid(Loaded(config, model, ema, None, int(state.step)), workdir)

    return Task(
        name="train",
        section=t,
        shapes=abstract,
        init=init,
        step=make_train_step(_with_step(update), mesh, shardings),
        inputs=inputs,
        evaluate=_evaluator(config, model),
        finish=finish,
    )


def final_grid(run: Loaded, workdir: str) -> None:
    """A grid of prior samples, one row per class: WORKDIR/samples_final.png."""
    s, d = run.config.sample, run.config.data
    labels = np.repeat(np.arange(d.num_classes), s.per_class)
    x = generate(run, labels=labels, num=len(labels), seed=run.config.seed)
    path = os.path.join(workdir, "samples_final.png")
    save_grid(x, path, ncols=s.per_class)
    logger.info(f"final samples: {path}")
