"""The diffusion task: the conditional UNet on images (or stage-1 latents) by its objective."""

import logging
import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jldm.build import samplers
from jldm.build.model import build_model, downsample, init_params, sr_factor
from jldm.build.noise import build_schedule
from jldm.build.objectives import build_loss
from jldm.build.state import abstract_state, create_state, make_optimizer
from jldm.build.text import condition_fn
from jldm.data.datasets import dataset_of, has_quality, reference_split
from jldm.data.stream import Source
from jldm.errors import UserError
from jldm.eval import make_grid, sample_quality, save_grid
from jldm.eval.fid import configured_weights, fid_to_split
from jldm.eval.grid import readable_scale
from jldm.runs.load import Loaded, Stage1
from jldm.sampling.pipeline import make_generator
from jldm.sampling.run import conditions
from jldm.train.fit import Task, Watched, final_samples
from jldm.train.inputs import as_source, source_batches
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, state_sharding
from jldm.train.step import make_train_step, make_update

logger = logging.getLogger(__name__)


def diffusion_task(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: Source | tuple[np.ndarray, np.ndarray],
    stage1: Stage1 | None = None,
    meta: dict | None = None,
) -> Task:
    """The task of config on data: a source of (inputs [n,H,W,C] in model space, labels [n])
    rows (training_source streams a split from disk), or those arrays in memory.

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
    source = as_source(data)
    inputs = source_batches(
        source,
        config.seed,
        t.batch_size,
        t.get("steps_per_call", 1),
        batch_sharding(mesh, 1),
        condition_fn(config),
        random_flip=config.data.get("random_flip", False),
        threads=config.data.get("threads", 4),
    )

    def ema_run(state) -> Loaded | None:
        """The EMA model as a run, on process 0 (None elsewhere)."""
        ema = state.ema_params
        if jax.process_count() > 1:  # a collective: every process takes part
            ema = multihost_utils.process_allgather(ema, tiled=True)
        if jax.process_index() != 0:
            return None
        ema = jax.device_get(ema)
        return Loaded(config, model, ema, build_schedule(config), int(state.step), stage1)

    watcher = Watcher(config, workdir, source)

    def finish(state) -> None:
        if not final_samples(config, workdir):
            return
        run = ema_run(state)
        if run is not None:
            x = watcher.grid(run)
            if not np.isfinite(x).all():
                raise UserError(
                    f"training ended but its EMA samples are not finite ({config.sample.sampler}): "
                    "sample.py with another --sampler or --guidance may tell why"
                )
            path = os.path.join(workdir, "samples_final.png")
            save_grid(x, path, ncols=config.sample.per_class)
            logger.info(f"final samples: {path}")

    def watch(state, step: int) -> Watched:
        run = ema_run(state)
        return Watched({}, {}) if run is None else watcher.watch(run, step)

    return Task(
        name="train",
        section=t,
        shapes=abstract,
        init=init,
        step=make_train_step(update, mesh, shardings),
        inputs=inputs,
        finish=finish,
        meta=meta or {},
        watch=watch,
        describe=f"```\n{config.to_json(indent=2)}\n```",
    )


class Watcher:
    """A run in progress, seen through its EMA params: one row per class of samples (a
    super-resolution run sharpens downsampled training images instead) and, from
    train.sample_quality samples (classes cycled), the quality figures on the digits and
    Fashion-MNIST and, when FID Inception weights are configured (train.fid_weights or
    $JLDM_FID_WEIGHTS), their FID against the dataset's test split (its statistics cached as
    jldm-fid --ref's). The config's sampler and seed throughout, so grids of one run differ only
    by the training between them; each sampler is compiled once, its params an argument."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, source: Source):
        self.config, self.workdir, self.source = config, workdir, source
        d = config.data
        self.num = config.train.get("sample_quality", 0)
        plain = self.num and sr_factor(config) == 1
        self.dataset = dataset_of(d)
        self.scored = plain and has_quality(d.name)
        self.fid_weights = None
        if plain and config.train.get("sample_every", 0):
            self.fid_weights = configured_weights(config.train.get("fid_weights", ""))
        if self.fid_weights is not None:
            from jldm.data.sources import open_split

            open_split(self.dataset, reference_split(d.name))  # no test split: refused now
        self.generators = {}

    def _sample(self, run: Loaded, name: str, labels, low_res, seed: int) -> np.ndarray:
        s = self.config.sample
        if name not in self.generators:
            self.generators[name] = make_generator(
                run,
                conditions(run, labels),
                sampler=s.sampler,
                steps=samplers.get(s.sampler).default_steps(self.config),
                guidance=s.guidance,
                eta=s.eta,
                low_res=low_res,
            )
        gen = self.generators[name]
        params = {"unet": run.params, "stage1": gen.params["stage1"]}
        return np.asarray(gen.fn(params, gen.cond, jax.random.PRNGKey(seed), gen.inputs))

    def grid(self, run: Loaded) -> np.ndarray:
        """config.sample.per_class samples of each class [N, H, W, C] in [0, 1]."""
        config = self.config
        labels = np.repeat(np.arange(config.data.num_classes), config.sample.per_class)
        low_res, f = None, sr_factor(config)
        if f > 1:
            first = self.source.rows(np.arange(min(len(labels), len(self.source))))[0]
            low_res = np.asarray(downsample(first, f))
            labels = labels[: len(low_res)]
        return self._sample(run, "grid", labels, low_res, config.seed)

    def watch(self, run: Loaded, step: int) -> Watched:
        """The grid as WORKDIR/samples/step_NNNNNNN.png and a TensorBoard image, and the quality
        figures as sample/* scalars."""
        config, d = self.config, self.config.data
        x = self.grid(run)
        path = os.path.join(self.workdir, "samples", f"step_{step:07d}.png")
        save_grid(x, path, ncols=config.sample.per_class)
        scalars = {"sample/nonfinite": float(np.mean(~np.isfinite(x)))}
        if self.scored or self.fid_weights:
            cycled = np.arange(self.num) % d.num_classes
            many = self._sample(run, "quality", cycled, None, config.seed + 1)
            if np.isfinite(many).all() and self.scored:
                q = sample_quality(many, cycled, self.dataset)
                scalars.update({f"sample/{k}": v for k, v in q.items() if v is not None})
            if np.isfinite(many).all() and self.fid_weights:
                split = reference_split(d.name)
                fid = fid_to_split(many, self.dataset, split, self.fid_weights)
                scalars.update({"sample/fid": fid, "sample/fid_samples": len(many)})
        grid = make_grid(x, ncols=config.sample.per_class, scale=readable_scale(x))
        return Watched(scalars, {"samples": grid})
