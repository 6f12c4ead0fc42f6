"""Notebook entry points: load a trained run, and draw class-conditional samples from it."""

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jldm.diffusion.likelihood import dequantize, ode_likelihood
from jldm.diffusion.samplers import classifier_free_guidance, ddim_sample, ddpm_sample
from jldm.diffusion.schedules import Schedule
from jldm.diffusion.score_samplers import annealed_langevin, ode_sample, pc_sample
from jldm.errors import UserError
from jldm.train import checkpoint
from jldm.train.config_io import read_config
from jldm.train.factory import build_model, build_schedule
from jldm.train.objectives import build_sde, check_sampler, make_score_net, ncsn_sigmas
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


def sampler_nfe(
    config: ml_collections.ConfigDict, sampler: str, steps: int, guidance: float
) -> int:
    """Network evaluations one sample costs with this sampler (guidance doubles them)."""
    s = config.sample
    per = {
        "ddpm": config.diffusion.timesteps,
        "ddim": steps,
        "als": config.diffusion.num_scales * s.steps_per_sigma + 1,
        "pc": steps * (1 + s.corrector_steps),
        "em": steps,
        "ode": steps * (4 if s.ode_method == "rk4" else 2),
    }[sampler]
    return per * (1 if guidance == 1.0 else 2)


def _check_request(run: Loaded, sampler: str, steps: int) -> None:
    check_sampler(run.config, sampler)
    T = run.schedule.num_timesteps
    if sampler == "ddim" and not 1 <= steps <= T:
        raise UserError(f"DDIM steps={steps} must be in 1..{T}: pick --steps in that range")
    if sampler in ("pc", "em", "ode") and steps < 1:
        raise UserError(f"steps={steps} must be >= 1: pick a positive --steps")


def _score_sampler(run: Loaded, model_fn, sampler: str, steps: int, shape):
    """key -> samples for a score objective; model_fn(x, c) is the guided score."""
    s, config = run.config.sample, run.config
    if sampler == "als":
        sigmas = ncsn_sigmas(config)

        def als(key):
            k0, k1 = jax.random.split(key)
            x0 = sigmas[0] * jax.random.normal(k0, shape)
            return annealed_langevin(model_fn, k1, x0, sigmas, s.steps_per_sigma, s.langevin_eps)

        return als
    sde = build_sde(config)
    if sampler == "ode":
        return lambda key: ode_sample(sde, model_fn, key, shape, steps, method=s.ode_method)[0]
    n_corr = s.corrector_steps if sampler == "pc" else 0
    return lambda key: pc_sample(sde, model_fn, key, shape, steps, s.snr, n_corr)[0]


def make_generator(
    run: Loaded,
    labels: np.ndarray,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    eta: float = 0.0,
):
    """The jitted sampler key -> images [N,H,W,C] (unclipped) for labels: [N] int.

    Compile it ahead with .lower(key).compile() to time sampling without compilation.
    """
    _check_request(run, sampler, steps)
    d = run.config.data
    labels = jnp.asarray(labels, jnp.int32)
    shape = (labels.shape[0], d.resolution, d.resolution, d.channels)
    prediction = run.config.diffusion.prediction
    null = jnp.full_like(labels, d.num_classes)

    if run.config.diffusion.objective == "ddpm":

        def apply_fn(x, t, y):
            return run.model.apply({"params": run.params}, x, t, y)

        model_fn = classifier_free_guidance(apply_fn, labels, null, guidance)
        if sampler == "ddpm":
            go = lambda key: ddpm_sample(model_fn, run.schedule, key, shape, prediction)
        else:
            go = lambda key: ddim_sample(model_fn, run.schedule, key, shape, steps, eta, prediction)
    else:
        net = make_score_net(run.config, run.model)
        model_fn = classifier_free_guidance(
            lambda x, c, y: net(run.params, x, c, y), labels, null, guidance
        )
        go = _score_sampler(run, model_fn, sampler, steps, shape)
    return jax.jit(go)


def generate(
    run: Loaded,
    labels: np.ndarray,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    eta: float = 0.0,
) -> np.ndarray:
    """Class-conditional samples, labels: [N] int -> images in [-1, 1]: [N,H,W,C].

    sampler: ddpm | ddim for the ddpm objective, als for ncsn, pc | em | ode for the SDEs.
    """
    go = make_generator(run, labels, sampler, steps, guidance, eta)
    return np.asarray(jnp.clip(go(jax.random.PRNGKey(seed)), -1.0, 1.0))


def bits_per_dim(
    run: Loaded,
    images_u8: np.ndarray,
    labels: np.ndarray | None = None,
    seed: int = 0,
    steps: int = 100,
    batch_size: int = 64,
) -> np.ndarray:
    """Bits/dim of 8-bit images [N,H,W,C] under the run's probability-flow ODE. -> [N].

    Uniform dequantisation, fixed-step RK4 with a Hutchinson divergence (one Rademacher probe
    per image); labels None scores the unconditional model (the null class). Defined for the SDE
    objectives only.
    """
    sde = build_sde(run.config)
    if sde is None:
        raise UserError(
            f"bits/dim needs an SDE objective (vesde, vpsde, subvpsde), not "
            f"{run.config.diffusion.objective!r}"
        )
    d = run.config.data
    images_u8 = np.asarray(images_u8)
    if images_u8.shape[1:] != (d.resolution, d.resolution, d.channels):
        raise UserError(
            f"images of shape {images_u8.shape[1:]} do not match the run's "
            f"{(d.resolution, d.resolution, d.channels)}: render them at data.resolution"
        )
    n = images_u8.shape[0]
    if labels is None:
        labels = np.full((n,), d.num_classes, np.int32)
    net = make_score_net(run.config, run.model)

    @jax.jit
    def chunk(key, pixels, y):
        k_deq, k_probe = jax.random.split(key)
        x = dequantize(k_deq, pixels)
        score_fn = lambda z, t: net(run.params, z, t, y)
        return ode_likelihood(sde, score_fn, k_probe, x, steps)[1]

    out = []
    key = jax.random.PRNGKey(seed)
    for i in range(0, n, batch_size):
        pix, y = images_u8[i : i + batch_size], np.asarray(labels[i : i + batch_size], np.int32)
        pad = batch_size - pix.shape[0]  # one compiled shape for every chunk
        pix = np.concatenate([pix, np.zeros((pad, *pix.shape[1:]), pix.dtype)])
        y = np.concatenate([y, np.full((pad,), d.num_classes, np.int32)])
        bpd = chunk(jax.random.fold_in(key, i), pix, y)
        out.append(np.asarray(bpd)[: batch_size - pad])
    return np.concatenate(out)
