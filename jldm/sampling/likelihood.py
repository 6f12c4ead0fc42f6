"""Bits/dim of images under a trained run's probability-flow ODE."""

import jax
import numpy as np

from jldm.build.noise import build_sde
from jldm.build.objectives import make_score_net
from jldm.diffusion.likelihood import dequantize, ode_likelihood
from jldm.errors import UserError
from jldm.sampling.run import Loaded


def bits_per_dim(
    run: Loaded,
    images_u8: np.ndarray,
    *,
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
    def chunk(params, key, pixels, y):
        k_deq, k_probe = jax.random.split(key)
        x = dequantize(k_deq, pixels)
        score_fn = lambda z, t: net(params, z, t, y)
        _, bpd, _, nfe = ode_likelihood(sde, score_fn, k_probe, x, steps, tol=tol)
        return bpd, nfe

    out, nfes = [], []
    key = jax.random.PRNGKey(seed)
    for i in range(0, n, batch_size):
        pix, y = images_u8[i : i + batch_size], np.asarray(labels[i : i + batch_size], np.int32)
        pad = batch_size - pix.shape[0]  # one compiled shape for every chunk
        pix = np.concatenate([pix, np.zeros((pad, *pix.shape[1:]), pix.dtype)])
        y = np.concatenate([y, np.full((pad,), d.num_classes, np.int32)])
        bpd, nfe = chunk(run.params, jax.random.fold_in(key, i), pix, y)
        out.append(np.asarray(bpd)[: batch_size - pad])
        nfes.append(np.full((batch_size - pad,), int(nfe)))
    bpd = np.concatenate(out)
    return (bpd, np.concatenate(nfes)) if with_nfe else bpd
