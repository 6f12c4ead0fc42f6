"""Stage 1 of latent diffusion as a task: the KL autoencoder with its patch discriminator.

The loss is the LDM autoencoder loss of jldm.diffusion.vae_losses: L1/L2 reconstruction, a
small KL weight, a perceptual distance in the features of a PerceptualNet classifier trained
here on the same data (or loaded from stage1.perceptual_weights), and the hinge patch-GAN term
from stage1.disc_start on. Autoencoder and discriminator params live in one TrainState as
{"ae": ..., "disc": ...}; a resumed run draws the same batches and keys as an uninterrupted one.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization

from jldm.build.autoencoder import build_autoencoder, build_discriminator, init_stage1
from jldm.build.state import TrainState, create_state, make_optimizer
from jldm.data import batches_for
from jldm.data.paths import isfile, join, makedirs, read_bytes, write_bytes_atomic
from jldm.diffusion.vae_losses import make_autoencoder_loss
from jldm.errors import UserError
from jldm.nn import perceptual
from jldm.runs.stage1_state import stage1_shapes
from jldm.train.fit import Task
from jldm.train.inputs import array_batches
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, replicated
from jldm.train.step import keep_if_finite, make_train_step


def save_perceptual(params, path: str) -> None:
    """Write the perceptual net's params as flax msgpack bytes to path (local or cloud),
    atomically: a reader sees the old file or the whole new one."""
    data = serialization.msgpack_serialize(jax.tree_util.tree_map(jnp.asarray, params))
    write_bytes_atomic(path, data)


def load_perceptual(path: str):
    """Params written by save_perceptual (local or cloud path); a missing file is a UserError
    naming the fix."""
    if not isfile(path):
        raise UserError(
            f"no perceptual-net weights at {path}: train PerceptualNet as a classifier and "
            "save its params there, or leave stage1.perceptual_weights empty"
        )
    return serialization.msgpack_restore(read_bytes(path))


def _perceptual_features(config, images: np.ndarray, labels: np.ndarray, folder: str):
    """Feature function of the perceptual net: loaded from a file, else trained and saved."""
    a = config.stage1
    net = perceptual.PerceptualNet(num_classes=config.data.num_classes)
    path = os.path.expanduser(a.perceptual_weights) or join(folder, "perceptual.msgpack")
    if a.perceptual_weights or isfile(path):
        return perceptual.feature_fn(net, load_perceptual(path))
    params = net.init(jax.random.PRNGKey(config.seed), jnp.asarray(images[:1]))["params"]
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss(p):
            logits = net.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    for i in range(a.perceptual_steps):
        idx = batches_for(config.seed + 1, i, 1, a.batch_size, len(images))[0]
        params, opt = step(params, opt, images[idx], labels[idx])
    if jax.process_index() == 0:
        makedirs(folder)
        save_perceptual(params, path)
    return perceptual.feature_fn(net, params)


def _update(config, features, tx):
    """One stage-1 step: the generator and the discriminator each by their own loss."""
    a = config.stage1
    ae, disc = build_autoencoder(config), build_discriminator(config)
    if a.rec_loss not in ("l1", "l2"):
        raise UserError(f"stage1.rec_loss={a.rec_loss!r}: use l1 or l2")

    def ae_apply(params, x, key):
        recon, post = ae.apply({"params": params}, x, key)
        return recon, post.mean, post.logvar

    gen_loss, disc_loss = make_autoencoder_loss(
        ae_apply,
        lambda params, x: disc.apply({"params": params}, x),
        rec_kind=a.rec_loss,
        kl_weight=a.kl_weight,
        perceptual_weight=a.perceptual_weight,
        features=features,
        disc_weight=a.disc_weight,
        disc_start=a.disc_start,
    )
    skip = a.get("skip_nonfinite", False)

    def update(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        p = state.params
        (g, gm), g_ae = jax.value_and_grad(gen_loss, has_aux=True)(
            p["ae"], p["disc"], rng, batch, state.step
        )
        (d, dm), g_disc = jax.value_and_grad(disc_loss, has_aux=True)(
            p["disc"], p["ae"], rng, batch, state.step
        )
        grads = {"ae": g_ae, "disc": g_disc}
        updates, opt_state = tx.update(grads, state.opt_state, p)
        params = optax.apply_updates(p, updates)
        finite = jnp.isfinite(g) & jnp.isfinite(d) & jnp.isfinite(optax.tree.norm(grads))
        if skip:
            params = keep_if_finite(finite, params, p)
            opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        new = state.replace(
            step=state.step + 1, params=params, ema_params=params, opt_state=opt_state
        )
        return new, {**gm, **dm, "nonfinite": 1.0 - finite.astype(jnp.float32)}

    return update


def stage1_task(
    config: ml_collections.ConfigDict, folder: str, images: np.ndarray, labels: np.ndarray
) -> Task:
    """The stage-1 task in folder on images [N,H,W,C] in [-1, 1] (labels train the perceptual
    net)."""
    a = config.stage1
    mesh = make_mesh()
    check_batch(a.batch_size, mesh)
    rep = replicated(mesh)
    tx = make_optimizer(a)
    shapes = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), stage1_shapes(config, tx)
    )
    init = jax.jit(
        lambda: create_state(lambda k: init_stage1(config, k), tx, config.seed), out_shardings=rep
    )
    cache = {}

    def step(state, batch):
        # Built on first use: a finished stage 1 that is only restored trains no perceptual net.
        if "fn" not in cache:
            features = None
            if a.perceptual_weight > 0:
                features = _perceptual_features(config, images, labels, folder)
            cache["fn"] = make_train_step(_update(config, features, tx), mesh)
        return cache["fn"](state, batch)

    inputs = array_batches(images, labels, config.seed, a.batch_size, 1, batch_sharding(mesh, 1))
    return Task("stage1", a, shapes, init, step, inputs, show="rec")
