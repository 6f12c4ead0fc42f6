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
from jldm.train.factory import (
    build_model,
    build_schedule,
    dummy_condition,
    is_latent,
    model_shape,
    null_condition,
    sr_factor,
    text_tokenizer,
    upsample,
)
from jldm.train.objectives import build_sde, check_sampler, make_score_net, ncsn_sigmas
from jldm.train.state import create_state, make_optimizer


class Loaded(NamedTuple):
    """A trained run: its config, Flax module, EMA params, noise schedule and step.

    stage1: for latent diffusion, (autoencoder module, its params, latent scale factor).
    """

    config: ml_collections.ConfigDict
    model: Any
    params: Any
    schedule: Schedule
    step: int
    stage1: tuple | None = None


def init_params(model, config: ml_collections.ConfigDict, key: jax.Array):
    """Fresh params of the conditional UNet for the shape it denoises (pixels or latents)."""
    res, ch = model_shape(config)
    x = jnp.zeros((1, res, res, ch * (2 if sr_factor(config) > 1 else 1)), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.int32), dummy_condition(config))["params"]


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
    state, meta = checkpoint.restore(mngr, abstract_state(config, model), step)
    params = state.ema_params if ema else state.params
    stage1 = None
    if is_latent(config):
        from jldm.train import autoencoder

        ae_params = autoencoder.load(config, meta["stage1"])
        stage1 = (autoencoder.build_autoencoder(config), ae_params, float(meta["latent_scale"]))
    return Loaded(config, model, params, build_schedule(config), int(state.step), stage1)


def conditions(run: Loaded, labels=None, prompts=None) -> np.ndarray:
    """The UNet's conditions: class ids [N], or token ids [N, L] for a text-conditional run.

    A text run given labels uses each class's first caption template; a class run refuses
    prompts.
    """
    config = run.config
    text = config.model.get("conditioning", "class") == "text"
    if prompts is not None:
        if not text:
            raise UserError("this run is class-conditional: pass --classes instead of --prompt")
        return text_tokenizer(config).encode(list(prompts), config.text.max_length)[0]
    labels = np.asarray(labels, np.int32)
    if text:
        from jldm.train.conditions import caption_table

        return caption_table(config)[labels, 0]
    return labels


def encode_images(run: Loaded, images: np.ndarray) -> np.ndarray:
    """Images [N,H,W,C] in [-1, 1] -> what the UNet denoises (scaled latents for an LDM)."""
    if run.stage1 is None:
        return np.asarray(images, np.float32)
    from jldm.train import ldm

    _, params, scale = run.stage1
    return ldm.encode(run.config, params, np.asarray(images, np.float32)) * scale


def decode(run: Loaded, x: jax.Array) -> jax.Array:
    """What the UNet denoises -> images [N,H,W,C] (the stage-1 decoder for an LDM)."""
    if run.stage1 is None:
        return x
    ae, params, scale = run.stage1
    return ae.apply({"params": params}, x / scale, method=ae.decode)


def sampler_nfe(
    config: ml_collections.ConfigDict, sampler: str, steps: int, guidance: float
) -> int:
    """Network evaluations one sample costs with this sampler (guidance doubles them)."""
    s = config.sample
    # Branches, not a table: a run's config only has the keys of the samplers it knows.
    if sampler == "ddpm":
        per = config.diffusion.timesteps
    elif sampler in ("ddim", "em"):
        per = steps
    elif sampler == "als":
        per = config.diffusion.num_scales * s.steps_per_sigma + 1
    elif sampler == "pc":
        per = steps * (1 + s.corrector_steps)
    else:
        per = steps * (4 if s.ode_method == "rk4" else 2)
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
    known: tuple[np.ndarray, np.ndarray] | None = None,
    low_res: np.ndarray | None = None,
):
    """The jitted sampler key -> images [N,H,W,C] (unclipped, decoded for an LDM).

    labels: the UNet's conditions, class ids [N] or token ids [N, L] (see conditions).
    known: (images [N,H,W,C] in [-1, 1], mask [N,H,W,1], 1 = keep) for inpainting, with the
    ddpm and ddim samplers. low_res: [N, R/f, R/f, C] in [-1, 1], the images a
    super-resolution run (model.low_res_factor = f) sharpens. Compile ahead with
    .lower(key).compile() to time sampling alone.
    """
    _check_request(run, sampler, steps)
    config = run.config
    res, ch = model_shape(config)
    labels = jnp.asarray(labels, jnp.int32)
    shape = (labels.shape[0], res, res, ch)
    prediction = config.diffusion.prediction
    null = jnp.broadcast_to(jnp.asarray(null_condition(config), jnp.int32), labels.shape)
    clip = run.stage1 is None  # latents are not confined to [-1, 1]
    if known is not None:
        known = _known_in_model_space(run, known, shape)
        if sampler not in ("ddpm", "ddim"):
            raise UserError(f"inpainting runs with the ddpm or ddim sampler, not {sampler!r}")

    extra = _low_res_input(config, low_res, shape)
    if config.diffusion.objective == "ddpm":

        def apply_fn(x, t, y):
            if extra is not None:
                reps = x.shape[0] // extra.shape[0]  # guidance doubles the batch
                x = jnp.concatenate([x, jnp.tile(extra, (reps, 1, 1, 1))], axis=-1)
            return run.model.apply({"params": run.params}, x, t, y)

        model_fn = classifier_free_guidance(apply_fn, labels, null, guidance)
        if sampler == "ddpm":
            go = lambda key: ddpm_sample(
                model_fn, run.schedule, key, shape, prediction, clip, known=known
            )
        else:
            go = lambda key: ddim_sample(
                model_fn, run.schedule, key, shape, steps, eta, prediction, clip, known=known
            )
    else:
        net = make_score_net(config, run.model)
        model_fn = classifier_free_guidance(
            lambda x, c, y: net(run.params, x, c, y), labels, null, guidance
        )
        go = _score_sampler(run, model_fn, sampler, steps, shape)
    return jax.jit(lambda key: decode(run, go(key)))


def _low_res_input(config, low_res, shape):
    """The upsampled low-resolution input of a super-resolution run [N,R,R,C], else None."""
    f = sr_factor(config)
    if f == 1:
        if low_res is not None:
            raise UserError("this run is not a super-resolution run: drop --low_res")
        return None
    want = (shape[0], shape[1] // f, shape[2] // f, shape[3])
    if low_res is None or tuple(np.shape(low_res)) != want:
        got = None if low_res is None else tuple(np.shape(low_res))
        raise UserError(f"super-resolution needs low-resolution images of shape {want}, got {got}")
    return upsample(jnp.asarray(low_res, jnp.float32), shape[1])


def _known_in_model_space(run: Loaded, known, shape) -> tuple[jax.Array, jax.Array]:
    """(images, mask) in pixels -> (x0, mask) where the UNet works (latent-resolution mask)."""
    images, mask = (np.asarray(a, np.float32) for a in known)
    d = run.config.data
    want = (shape[0], d.resolution, d.resolution, d.channels)
    if images.shape != want:
        raise UserError(f"inpainting source of shape {images.shape}: expected {want}")
    if mask.shape not in (want[:3] + (1,), want):
        raise UserError(
            f"inpainting mask of shape {mask.shape}: expected {want[:3] + (1,)} (1 = keep)"
        )
    x0 = encode_images(run, images)
    if run.stage1 is not None:
        # A latent is kept only where its whole pixel footprint is known.
        f = d.resolution // shape[1]
        m = mask.min(axis=-1, keepdims=True).reshape(shape[0], shape[1], f, shape[2], f, 1)
        mask = m.min(axis=(2, 4))
    return jnp.asarray(x0), jnp.asarray(mask)


def generate(
    run: Loaded,
    labels: np.ndarray | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    eta: float = 0.0,
    prompts: list[str] | None = None,
    known: tuple[np.ndarray, np.ndarray] | None = None,
    low_res: np.ndarray | None = None,
) -> np.ndarray:
    """Samples for class labels [N] or text prompts (N strings) -> images [N,H,W,C] in [-1, 1].

    sampler: ddpm | ddim for the ddpm objective, als for ncsn, pc | em | ode for the SDEs.
    known: (images [N,H,W,C] in [-1, 1], mask [N,H,W,1], 1 = keep) inpaints the rest;
    low_res: [N,R/f,R/f,C] in [-1, 1] for a super-resolution run.
    """
    if (labels is None) == (prompts is None):
        raise UserError("pass either class labels or prompts")
    cond = conditions(run, labels, prompts)
    go = make_generator(run, cond, sampler, steps, guidance, eta, known, low_res)
    return np.asarray(jnp.clip(go(jax.random.PRNGKey(seed)), -1.0, 1.0))


def bits_per_dim(
    run: Loaded,
    images_u8: np.ndarray,
    labels: np.ndarray | None = None,
    seed: int = 0,
    steps: int | None = None,
    tol: float = 1e-5,
    batch_size: int = 64,
    with_nfe: bool = False,
):
    """Bits/dim of 8-bit images [N,H,W,C] under the run's probability-flow ODE. -> [N].

    Uniform dequantisation and a Hutchinson divergence (one Rademacher probe per image), the ODE
    solved adaptively to rtol = atol = tol, or by `steps` fixed RK4 steps; labels None scores
    the unconditional model (the null class). with_nfe: also return the network evaluations per
    image ([N], each image's batch). Defined for the SDE objectives only.
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
        _, bpd, _, nfe = ode_likelihood(sde, score_fn, k_probe, x, steps, tol=tol)
        return bpd, nfe

    out, nfes = [], []
    key = jax.random.PRNGKey(seed)
    for i in range(0, n, batch_size):
        pix, y = images_u8[i : i + batch_size], np.asarray(labels[i : i + batch_size], np.int32)
        pad = batch_size - pix.shape[0]  # one compiled shape for every chunk
        pix = np.concatenate([pix, np.zeros((pad, *pix.shape[1:]), pix.dtype)])
        y = np.concatenate([y, np.full((pad,), d.num_classes, np.int32)])
        bpd, nfe = chunk(jax.random.fold_in(key, i), pix, y)
        out.append(np.asarray(bpd)[: batch_size - pad])
        nfes.append(np.full((batch_size - pad,), int(nfe)))
    bpd = np.concatenate(out)
    return (bpd, np.concatenate(nfes)) if with_nfe else bpd
