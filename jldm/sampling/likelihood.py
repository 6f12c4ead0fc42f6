"""Bits/dim of 8-bit images under a trained diffusion run: the probability-flow ODE of the SDE,
EDM and flow-matching objectives, the discrete variational bound of DDPM.

Both are upper bounds on the bits/dim of the 8-bit pixels: the ODE's through uniform
dequantisation (log2 of the bin width added), the bound's through its discretised decoder. Each
image draws its randomness (dequantisation, Hutchinson probe, x_t noise, strata) from
fold_in(PRNGKey(seed), its index in images_u8), and the ODE solver controls each image's steps
on its own, so an image's figure does not depend on batch_size or on the images beside it.
"""

import math

import jax
import ml_collections
import numpy as np

from jldm.build.frames import likelihood_flow
from jldm.build.model import is_latent, null_condition, sr_factor
from jldm.build.noise import build_schedule
from jldm.build.objectives import make_net
from jldm.build.ranges import check_seed
from jldm.build.vae import is_vae
from jldm.diffusion.likelihood import dequantize, flow_likelihood
from jldm.diffusion.score_losses import sample_probe
from jldm.diffusion.vlb import VARIANCES, pixels_to_data, vlb
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.sampling.run import conditions
from jldm.sampling.vae_likelihood import has_density, vae_bits_per_dim

LEVELS = 256
DATA_RANGE = (-1.0, 1.0)  # pixel-space runs train on images scaled to [-1, 1]


def method(config: ml_collections.ConfigDict) -> str | None:
    """How the run's bits/dim are measured: "ode" (vesde, vpsde, subvpsde, edm, flow), "vlb"
    (ddpm), "iwae"
    (a VAE with a density), or None: no density of the pixels (ncsn, latent runs,
    super-resolution's conditional model, a Bernoulli VAE on intensities)."""
    if is_vae(config):
        return "iwae" if has_density(config) else None
    if is_latent(config) or sr_factor(config) > 1:
        return None
    if config.diffusion.objective == "ddpm":
        return "vlb"
    return "ode" if likelihood_flow(config, None) is not None else None


def _refuse(config: ml_collections.ConfigDict) -> None:
    f = config.diffusion
    if is_vae(config):
        raise UserError("a VAE run's bits/dim are its ELBO/IWAE bounds: use jldm.bits_per_dim")
    if is_latent(config):
        raise UserError(
            "bits/dim of a latent run would be of its autoencoder's latents, not of the pixels: "
            "measure a pixel-space run"
        )
    if sr_factor(config) > 1:
        raise UserError(
            "bits/dim of a super-resolution run would be conditional on its low-res input: "
            "measure a run with model.low_res_factor=1"
        )
    raise UserError(
        f"bits/dim need a density: objective {f.objective!r} has none; use ddpm, vesde, vpsde "
        "subvpsde, edm or flow"
    )


def bits_per_dim(
    run: Loaded,
    images_u8: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
    steps: int | None = None,
    tol: float = 1e-5,
    max_steps: int = 2000,
    terms: int | None = None,
    variance: str = "small",
    clip: bool = True,
    batch_size: int = 64,
    with_nfe: bool = False,
):
    """Bits/dim of 8-bit images [N,H,W,C] under the run's model. -> [N] (and nfe [N]).

    ODE objectives ("ode": the SDEs, edm, flow): uniform dequantisation, one Rademacher probe
    per image, the probability-flow ODE from the data to the prior
    (jldm.build.frames.likelihood_flow) solved adaptively to rtol = atol = tol (at most max_steps
    step attempts per image, else a UserError), or by `steps` fixed RK4 steps.
    ddpm ("vlb"): the variational bound with the fixed reverse variance `variance` (small:
    beta~_t, large: beta_t), summed over all T terms (terms None) or estimated from `terms`
    of them, the decoder's and one stratified draw each over the rest (jldm.diffusion.vlb);
    clip: x0 estimates clipped to [-1, 1] as the ddpm sampler clips them.
    labels None scores the unconditional model (the null condition). with_nfe: also the
    network evaluations per image [N].
    """
    config = run.config
    kind = method(config)
    if kind in (None, "iwae"):
        _refuse(config)
    if variance not in VARIANCES or (terms is not None and terms < 2):
        raise UserError(f"variance={variance!r}, terms={terms}: use small|large and terms >= 2")
    d = config.data
    images_u8 = np.asarray(images_u8)
    if images_u8.shape[1:] != (d.resolution, d.resolution, d.channels):
        raise UserError(
            f"images of shape {images_u8.shape[1:]} do not match the run's "
            f"{(d.resolution, d.resolution, d.channels)}: render them at data.resolution"
        )
    n = images_u8.shape[0]
    batch_size = max(1, min(batch_size, n))  # one compiled shape, no more padding than needed
    null = np.asarray(null_condition(config), np.int32)
    if labels is None:
        cond = np.broadcast_to(null, (n, *null.shape))
    else:
        cond = conditions(run, np.asarray(labels))
    chunk = (
        _ode_chunk(run, tol, steps, max_steps)
        if kind == "ode"
        else _vlb_chunk(run, terms, variance, clip)
    )
    base = jax.random.PRNGKey(check_seed(seed))
    out, nfes = [], []
    for i in range(0, n, batch_size):
        pix, y = images_u8[i : i + batch_size], cond[i : i + batch_size]
        valid, pad = len(pix), batch_size - len(pix)  # one compiled shape for every chunk
        pix = np.concatenate([pix, np.zeros((pad, *pix.shape[1:]), pix.dtype)])
        y = np.concatenate([y, np.broadcast_to(null, (pad, *null.shape))])
        index = np.arange(i, i + batch_size, dtype=np.int32)
        bpd, nfe, done = (np.asarray(a)[:valid] for a in chunk(run.params, base, index, pix, y))
        if not done.all():
            raise UserError(
                f"the likelihood ODE hit max_steps={max_steps} before T on {int((~done).sum())} "
                f"of {valid} images at tol={tol}: raise max_steps or tol, or give fixed steps"
            )
        out.append(bpd)
        nfes.append(nfe)
    bpd = np.concatenate(out)
    return (bpd, np.concatenate(nfes)) if with_nfe else bpd


def summary(run: Loaded, images_u8: np.ndarray, *, seed: int = 0, **options) -> dict:
    """The mean figures of images_u8 as compare reports them: bits_per_dim, bpd_method,
    bpd_images and bpd_nfe (evaluations per image); a VAE's also elbo_bpd and iwae_samples
    (prefixed binary_ for a Bernoulli VAE's binarised pixels: other data). options: those of
    bits_per_dim, and iwae_samples (VAE runs: K, None: the config's)."""
    kind, samples = method(run.config), options.pop("iwae_samples", None)
    if kind == "iwae":
        out = vae_bits_per_dim(run, images_u8, seed=seed, samples=samples)
        prefix = "" if out["data"] == "8-bit" else "binary_"
        return {
            f"{prefix}bits_per_dim": float(np.mean(out["iwae"])),
            f"{prefix}elbo_bpd": float(np.mean(out["elbo"])),
            "bpd_method": f"iwae K={out['samples']}",
            "bpd_images": len(images_u8),
            "bpd_nfe": float(out["decoder_evals"]),
            "iwae_samples": out["samples"],
        }
    bpd, nfe = bits_per_dim(run, images_u8, seed=seed, with_nfe=True, **options)
    if kind == "vlb":
        kind += f" {options.get('terms') or 'all'} terms"
    return {
        "bits_per_dim": float(np.mean(bpd)),
        "bpd_method": kind,
        "bpd_images": len(bpd),
        "bpd_nfe": float(nfe.mean()),
    }


def _keys(base: jax.Array, index: jax.Array) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


def _ode_chunk(run: Loaded, tol: float, steps: int | None, max_steps: int):
    config = run.config
    net = make_net(config, run.model)

    @jax.jit
    def chunk(params, base, index, pixels, y):
        keys = _keys(base, index)
        x = jax.vmap(lambda k, p: dequantize(jax.random.fold_in(k, 0), p, LEVELS, *DATA_RANGE))(
            keys, pixels
        )
        v = jax.vmap(lambda k: sample_probe(jax.random.fold_in(k, 1), x.shape[1:]))(keys)
        ode = likelihood_flow(config, lambda z, c: net(params, z, c, y))
        out = flow_likelihood(
            ode.drift, ode.prior_logp, x, ode.t0, ode.t1, v,
            n_steps=steps, tol=tol, max_steps=max_steps, levels=LEVELS, data_range=DATA_RANGE,
        )  # fmt: skip
        return out.bpd, out.nfe, out.done

    return chunk


def _vlb_chunk(run: Loaded, terms: int | None, variance: str, clip: bool):
    config = run.config
    schedule, net = build_schedule(config), make_net(config, run.model)
    prediction = config.diffusion.prediction

    @jax.jit
    def chunk(params, base, index, pixels, y):
        x0 = pixels_to_data(pixels, LEVELS, *DATA_RANGE)
        model_fn = lambda x, t: net(params, x, t, y)
        nats, nfe = vlb(
            model_fn, schedule, prediction, x0, _keys(base, index), terms, variance, LEVELS,
            DATA_RANGE, clip,
        )  # fmt: skip
        bpd = nats / (math.prod(x0.shape[1:]) * math.log(2.0))
        return bpd, np.full(x0.shape[:1], nfe), np.ones(x0.shape[:1], bool)

    return chunk
