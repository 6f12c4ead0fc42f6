"""Stage 1 of latent diffusion: train the KL autoencoder (with its patch discriminator).

The loss is the LDM autoencoder loss of jldm.diffusion.vae_losses: L1/L2 reconstruction, a
small KL weight, a perceptual distance in the features of a PerceptualNet classifier trained
here on the same data (or loaded from stage1.perceptual_weights), and the hinge patch-GAN term
from stage1.disc_start on. Autoencoder and discriminator params live in one TrainState as
{"ae": ..., "disc": ...}; a resumed run draws the same batches and keys as an uninterrupted one.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jldm.data import batches_for
from jldm.diffusion.vae_losses import make_autoencoder_loss
from jldm.errors import UserError
from jldm.nn import perceptual
from jldm.nn.autoencoder import AutoencoderKL
from jldm.nn.discriminator import PatchDiscriminator
from jldm.train import checkpoint
from jldm.train.metrics_log import MetricWriter
from jldm.train.sharding import batch_sharding, check_batch, make_mesh, replicated, to_global
from jldm.train.state import TrainState, create_state, make_optimizer


def build_autoencoder(config: ml_collections.ConfigDict) -> AutoencoderKL:
    """The AutoencoderKL of config.stage1 for config.data's channels."""
    a = config.stage1
    return AutoencoderKL(
        out_channels=config.data.channels,
        latent_channels=a.latent_channels,
        channels=a.channels,
        channel_mult=tuple(a.channel_mult),
        num_res_blocks=a.num_res_blocks,
        norm_groups=a.norm_groups,
    )


def _discriminator(config: ml_collections.ConfigDict) -> PatchDiscriminator:
    a = config.stage1
    if config.data.resolution // 2**a.disc_layers - 2 < 1:
        raise UserError(
            f"stage1.disc_layers={a.disc_layers} leaves no patch at data.resolution="
            f"{config.data.resolution} (each layer halves it, the last two convs trim 2): "
            "use fewer layers"
        )
    return PatchDiscriminator(channels=a.disc_channels, n_layers=a.disc_layers)


def _init(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
    d = config.data
    x = jnp.zeros((1, d.resolution, d.resolution, d.channels), jnp.float32)
    k_ae, k_disc = jax.random.split(key)
    ae = build_autoencoder(config).init(k_ae, x)["params"]
    disc = _discriminator(config).init(k_disc, x)["params"]
    return {"ae": ae, "disc": disc}


def _optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return make_optimizer(config.stage1)


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
    """Shapes of the stage-1 TrainState, without allocating it."""
    tx = _optimizer(config)
    return jax.eval_shape(lambda: create_state(lambda k: _init(config, k), tx, config.seed))


def _perceptual_features(config, images: np.ndarray, labels: np.ndarray, folder: str):
    """Feature function of the perceptual net: loaded from a file, else trained and saved."""
    a = config.stage1
    net = perceptual.PerceptualNet(num_classes=config.data.num_classes)
    path = os.path.expanduser(a.perceptual_weights) or os.path.join(folder, "perceptual.msgpack")
    if a.perceptual_weights or os.path.isfile(path):
        return perceptual.feature_fn(net, perceptual.load_params(path))
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
        os.makedirs(folder, exist_ok=True)
        perceptual.save_params(params, path)
    return perceptual.feature_fn(net, params)


def _loss_fns(config, features):
    a = config.stage1
    ae, disc = build_autoencoder(config), _discriminator(config)

    def ae_apply(params, x, key):
        recon, post = ae.apply({"params": params}, x, key)
        return recon, post.mean, post.logvar

    def disc_apply(params, x):
        return disc.apply({"params": params}, x)

    if a.rec_loss not in ("l1", "l2"):
        raise UserError(f"stage1.rec_loss={a.rec_loss!r}: use l1 or l2")
    return make_autoencoder_loss(
        ae_apply,
        disc_apply,
        rec_kind=a.rec_loss,
        kl_weight=a.kl_weight,
        perceptual_weight=a.perceptual_weight,
        features=features,
        disc_weight=a.disc_weight,
        disc_start=a.disc_start,
    )


def _train_step(config, features, mesh):
    gen_loss, disc_loss = _loss_fns(config, features)
    tx = _optimizer(config)

    def update(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        p = state.params
        (_, gm), g_ae = jax.value_and_grad(gen_loss, has_aux=True)(
            p["ae"], p["disc"], rng, batch, state.step
        )
        (_, dm), g_disc = jax.value_and_grad(disc_loss, has_aux=True)(
            p["disc"], p["ae"], rng, batch, state.step
        )
        updates, opt_state = tx.update({"ae": g_ae, "disc": g_disc}, state.opt_state, p)
        params = optax.apply_updates(p, updates)
        new = state.replace(
            step=state.step + 1, params=params, ema_params=params, opt_state=opt_state
        )
        return new, {**gm, **dm}

    rep = replicated(mesh)
    return jax.jit(
        update,
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


def train(config: ml_collections.ConfigDict, folder: str, images: np.ndarray, labels: np.ndarray):
    """Train (or resume) stage 1 in folder on images [N,H,W,C] in [-1, 1]; -> autoencoder params.

    A stage-1 run that is already complete is only restored.
    """
    a = config.stage1
    mesh = make_mesh()
    check_batch(a.batch_size, mesh)
    rep = replicated(mesh)
    mngr = checkpoint.manager(folder, a.keep_checkpoints)
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), abstract_state(config)
    )
    if mngr.latest_step() is not None:
        state, _ = checkpoint.restore_latest(mngr, abstract, move_aside=True)
    else:
        init = jax.jit(
            lambda: create_state(lambda k: _init(config, k), _optimizer(config), config.seed),
            out_shardings=rep,
        )
        state = init()
    start, main = int(state.step), jax.process_index() == 0
    if start >= a.steps:
        return jax.device_get(state.params["ae"])
    features = None
    if a.perceptual_weight > 0:
        features = _perceptual_features(config, images, labels, folder)
    step_fn = _train_step(config, features, mesh)
    writer = MetricWriter(folder, enabled=main)
    sharding = batch_sharding(mesh)
    bar = tqdm(total=a.steps, initial=start, unit="step", disable=not main, desc="stage 1")
    t_last, s_last = time.perf_counter(), start
    for step in range(start, a.steps):
        idx = batches_for(
            config.seed,
            step,
            1,
            a.batch_size,
            len(images),
            jax.process_index(),
            jax.process_count(),
        )[0]
        state, metrics = step_fn(state, {"image": to_global(images[idx], sharding)})
        done = step + 1
        bar.update(1)
        if done % a.log_every == 0 or done == a.steps:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(scalars["loss"]):
                raise UserError(f"stage-1 loss became NaN/Inf at step {done}: lower stage1.lr")
            now = time.perf_counter()
            scalars["steps_per_sec"] = (done - s_last) / (now - t_last)
            t_last, s_last = now, done
            writer.write(done, scalars)
            bar.set_postfix(rec=f"{scalars['rec']:.3f}")
        if done % a.checkpoint_every == 0 or done == a.steps:
            checkpoint.save(mngr, state, {"step": done, "data_step": done})
    bar.close()
    writer.close()
    return jax.device_get(state.params["ae"])


def load(config: ml_collections.ConfigDict, folder: str):
    """The trained autoencoder params of a finished stage-1 run in folder."""
    mngr = checkpoint.manager(folder, read_only=True)
    if mngr.latest_step() is None:
        raise UserError(
            f"no stage-1 checkpoint in {folder}/checkpoints: train stage 1 first, or leave "
            "stage1.workdir empty to train it in WORKDIR/stage1"
        )
    state, _ = checkpoint.restore_latest(mngr, abstract_state(config))
    if int(state.step) < config.stage1.steps:
        raise UserError(
            f"stage 1 in {folder} stopped at step {int(state.step)} of {config.stage1.steps}: "
            "rerun train.py to finish it"
        )
    return state.params["ae"]
