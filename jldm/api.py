"""Notebook entry points: load a trained run, and draw class-conditional samples from it."""

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jldm.diffusion.samplers import classifier_free_guidance, ddim_sample, ddpm_sample
from jldm.diffusion.schedules import Schedule
from jldm.errors import UserError
from jldm.train import checkpoint
from jldm.train.config_io import read_config
from jldm.train.factory import build_model, build_schedule
from jldm.train.state import create_state, make_optimizer


class Loaded(NamedTuple):
    """A trained run: its config, Flax module, EMA params, noise schedule and step."""

    config: ml_collections.ConfigDict
    model: Any
    params: Any
    schedule: Schedule
    step: int


def init_params(model, config: ml_collections.ConfigDict, key: jax.Array):
    """Fresh params of the class-conditional model for config.data's image shape."""
    d = config.data
    x = jnp.zeros((1, d.resolution, d.resolution, d.channels), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))["params"]


def abstract_state(config: ml_collections.ConfigDict, model):
    """Shapes and dtypes of the TrainState for config, without allocating it."""
    tx = make_optimizer(config.train)
    return jax.eval_shape(
        lambda: create_state(lambda k: init_params(model, config, k), tx, config.seed)
    )


def load(workdir: str, step: int | None = None, ema: bool = True) -> Loaded:
    """Load config, model and (EMA) params of a run from its Orbax checkpoints."""
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist: pass the --workdir given to train.py")
    config = read_config(workdir)
    model = build_model(config)
    mngr = checkpoint.manager(workdir, read_only=True)
    if mngr.latest_step() is None:
        raise UserError(f"no checkpoint in {workdir}/checkpoints: train first with train.py")
    state, _ = checkpoint.restore(mngr, abstract_state(config, model), step)
    params = state.ema_params if ema else state.params
    return Loaded(config, model, params, build_schedule(config), int(state.step))


def generate(
    run: Loaded,
    labels: np.ndarray,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    eta: float = 0.0,
) -> np.ndarray:
    """Class-conditional samples, labels: [N] int -> images in [-1, 1]: [N,H,W,C]."""
    d = run.config.data
    labels = jnp.asarray(labels, jnp.int32)
    shape = (labels.shape[0], d.resolution, d.resolution, d.channels)
    prediction = run.config.diffusion.prediction

    def apply_fn(x, t, y):
        return run.model.apply({"params": run.params}, x, t, y)

    @jax.jit
    def go(key):
        null = jnp.full_like(labels, d.num_classes)
        model_fn = classifier_free_guidance(apply_fn, labels, null, guidance)
        if sampler == "ddpm":
            return ddpm_sample(model_fn, run.schedule, key, shape, prediction)
        return ddim_sample(model_fn, run.schedule, key, shape, steps, eta, prediction)

    if sampler not in ("ddpm", "ddim"):
        raise UserError(f"unknown sampler {sampler!r}: use ddpm or ddim")
    T = run.schedule.num_timesteps
    if sampler == "ddim" and not 1 <= steps <= T:
        raise UserError(f"DDIM steps={steps} must be in 1..{T}: pick --steps in that range")
    return np.asarray(go(jax.random.PRNGKey(seed)))
