"""Score and energy MLPs on 2-D toy densities: every score matching objective, trained and sampled.

The data are exact draws from a Gaussian mixture (data.name toy_mixture) or a ring of Gaussians
(toy_ring), so the true score of the data, and of the data noised at any level, is known in
closed form. That gives what image runs cannot: the score error, the relative mean squared error
E|s_theta - s|^2 / E|s|^2 of the learned score against the exact one on fresh draws, over the
noise levels the objective trains at (weighted as it weighs them, see score_error); and the
sampled mode weights against the true weights.

Objectives (diffusion.objective) and what the network's condition c is:
- esm, ism, sliced: the clean density, c a constant 0; sampled by Langevin dynamics.
- dsm: one noise level diffusion.sigma, c = sigma (log-conditioned); Langevin at that sigma.
- ncsn: the geometric ladder sigma_max..sigma_min, c = sigma (log); annealed Langevin (als).
- vesde, vpsde, subvpsde: continuous-time DSM, c = t; pc, em (pc without corrector) or ode.
"""

import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jldm.diffusion import score_losses, score_samplers
from jldm.diffusion import toy as toy_density
from jldm.diffusion.toy import GaussianMixture
from jldm.errors import UserError
from jldm.eval.scatter import save_scatter
from jldm.nn.mlp import ScoreMLP
from jldm.train import checkpoint
from jldm.train.config_io import write_config
from jldm.train.metrics_log import MetricWriter
from jldm.train.objectives import build_sde, ncsn_sigmas
from jldm.train.signals import stop_requests
from jldm.train.state import TrainState, create_state, make_optimizer
from jldm.train.step import check_steps_per_call, make_update, mean_metrics

DATASETS = ("toy_mixture", "toy_ring")
SDE_OBJECTIVES = ("vesde", "vpsde", "subvpsde")
SAMPLERS = {
    "esm": ("langevin",),
    "ism": ("langevin",),
    "sliced": ("langevin",),
    "dsm": ("langevin",),
    "ncsn": ("als",),
    **{name: ("pc", "em", "ode") for name in SDE_OBJECTIVES},
}
OBJECTIVES = tuple(SAMPLERS)

# Tag of the toy runs' own key streams (the bytes of "toy").
_STREAMS = 0x746F79

# Noise levels of an objective: conditions c [L] and the noised data x_c = alpha x0 + std z.
Levels = tuple[jax.Array, jax.Array, jax.Array]


def _positive(name: str, value) -> None:
    if not value > 0:
        raise UserError(f"{name}={value} must be > 0: set a positive value")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every setting a toy run reads, checked before any work is done."""
    d, f, t, s = config.data, config.diffusion, config.train, config.sample
    if d.name not in DATASETS:
        raise UserError(f"data.name={d.name!r} is not a toy density: use {' or '.join(DATASETS)}")
    _positive("data.std", d.std)
    if d.name == "toy_ring":
        if d.n_modes < 1:
            raise UserError(f"data.n_modes={d.n_modes} must be >= 1 for toy_ring")
        _positive("data.radius", d.radius)
        k = d.n_modes
    else:
        try:
            means = np.asarray(d.means, np.float64)
        except (TypeError, ValueError):
            means = np.zeros((0,))
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] != 2:
            raise UserError(
                f"data.means has shape {means.shape}: toy_mixture needs ((x, y), ...) pairs"
            )
        k = means.shape[0]
    if len(d.weights) not in (0, k) or any(not w > 0 for w in d.weights):
        raise UserError(
            f"data.weights={tuple(d.weights)}: give {k} positive weights (one per mode) or () "
            "for equal weights"
        )
    if f.objective not in OBJECTIVES:
        raise UserError(
            f"diffusion.objective={f.objective!r} is not a toy objective: use one of "
            f"{', '.join(OBJECTIVES)}"
        )
    if f.parameterization not in ("score", "energy"):
        raise UserError(f"diffusion.parameterization={f.parameterization!r}: use score or energy")
    if f.objective == "dsm":
        _positive("diffusion.sigma", f.sigma)
    if f.objective in ("ncsn", "vesde") and not 0 < f.sigma_min < f.sigma_max:
        raise UserError(
            f"diffusion.sigma_min={f.sigma_min}, sigma_max={f.sigma_max}: need "
            "0 < sigma_min < sigma_max"
        )
    if f.objective == "ncsn" and f.num_scales < 2:
        raise UserError(f"diffusion.num_scales={f.num_scales} must be >= 2 for ncsn")
    if f.objective in ("vpsde", "subvpsde") and not 0 < f.beta_min <= f.beta_max:
        raise UserError(
            f"diffusion.beta_min={f.beta_min}, beta_max={f.beta_max}: need 0 < beta_min <= beta_max"
        )
    if f.objective == "sliced":
        if f.n_projections < 1:
            raise UserError(f"diffusion.n_projections={f.n_projections} must be >= 1")
        if f.probe not in ("rademacher", "gaussian"):
            raise UserError(f"diffusion.probe={f.probe!r}: use rademacher or gaussian")
    if s.sampler not in SAMPLERS[f.objective]:
        raise UserError(
            f"sample.sampler={s.sampler!r} does not apply to objective {f.objective!r}: "
            f"use {' or '.join(SAMPLERS[f.objective])}"
        )
    if t.batch_size < 1:
        raise UserError(f"train.batch_size={t.batch_size} must be >= 1")
    check_steps_per_call(t)
    for name in ("num", "steps"):
        if getattr(s, name) < 1:
            raise UserError(f"sample.{name}={getattr(s, name)} must be >= 1")
    if s.sampler == "langevin":
        _positive("sample.step_size", s.step_size)
    if s.sampler == "als":
        _positive("sample.langevin_eps", s.langevin_eps)
    if s.sampler == "ode" and s.ode_method not in ("rk4", "heun"):
        raise UserError(f"sample.ode_method={s.ode_method!r}: use rk4 or heun")
    if config.model.features < 1 or config.model.depth < 1:
        raise UserError("model.features and model.depth must be >= 1")
    if config.eval.num < 1 or config.eval.levels < 1:
        raise UserError("eval.num and eval.levels must be >= 1")


def build_density(config: ml_collections.ConfigDict) -> GaussianMixture:
    """The exact data density of config.data."""
    d = config.data
    weights = tuple(d.weights) or None
    if d.name == "toy_ring":
        return toy_density.ring(d.n_modes, d.radius, d.std, weights)
    return toy_density.gaussian_mixture(d.means, d.std, weights)


def build_model(config: ml_collections.ConfigDict) -> ScoreMLP:
    """ScoreMLP: an energy for parameterization=energy; log-sigma input for dsm and ncsn."""
    m, f = config.model, config.diffusion
    return ScoreMLP(
        features=m.features,
        depth=m.depth,
        embed_dim=m.embed_dim,
        energy=f.parameterization == "energy",
        log_cond=f.objective in ("dsm", "ncsn"),
    )


def _init_fn(model: ScoreMLP):
    return lambda key: model.init(key, jnp.zeros((1, 2)), jnp.ones((1,)))["params"]


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
    """Shapes, dtypes and (one-device) shardings of a toy run's TrainState, for restoring it."""
    tx = make_optimizer(config.train)
    shapes = jax.eval_shape(lambda: create_state(_init_fn(build_model(config)), tx, config.seed))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes
    )


def noise_levels(config: ml_collections.ConfigDict) -> Levels:
    """(c, alpha, std), each [L]: the conditions the objective trains at and their noise."""
    f = config.diffusion
    if f.objective in SDE_OBJECTIVES:
        t = jnp.linspace(f.eps_t, build_sde(config).T, config.eval.levels)
        alpha, std = build_sde(config).mean_coef_std(t)
        return t, alpha, std
    if f.objective == "ncsn":
        sigmas = ncsn_sigmas(config)
        return sigmas, jnp.ones_like(sigmas), sigmas
    sigma = jnp.full((1,), f.sigma if f.objective == "dsm" else 0.0, jnp.float32)
    return sigma, jnp.ones_like(sigma), sigma


def noised(mix: GaussianMixture, alpha: jax.Array, std: jax.Array) -> GaussianMixture:
    """Density of alpha x0 + std z, x0 ~ mix: means alpha m_k, variances alpha^2 s_k^2 + std^2."""
    stds = jnp.sqrt(jnp.square(alpha * mix.stds) + jnp.square(std))
    return GaussianMixture(alpha * mix.means, stds, mix.weights)


def build_loss(config: ml_collections.ConfigDict, apply_fn, mix: GaussianMixture):
    """loss_fn(params, rng, {"x": [B,2]}) -> (loss, metrics) for config.diffusion.objective."""
    f = config.diffusion
    energy = f.parameterization == "energy"
    if f.objective == "esm":
        return score_losses.make_esm_loss(apply_fn, mix.score, energy)
    if f.objective == "ism":
        return score_losses.make_ism_loss(apply_fn, energy)
    if f.objective == "sliced":
        return score_losses.make_sliced_loss(
            apply_fn, f.n_projections, f.probe, f.variance_reduction, energy
        )
    if f.objective == "dsm":
        return score_losses.make_dsm_loss(apply_fn, f.sigma, energy)
    if f.objective == "ncsn":
        return score_losses.make_ncsn_loss(apply_fn, ncsn_sigmas(config), energy)
    return score_losses.make_sde_loss(apply_fn, build_sde(config), f.eps_t, energy)


def score_error(score_fn, mix: GaussianMixture, levels: Levels, key: jax.Array, n: int):
    """Relative MSE of score_fn(x [n,2], c [n]) on n fresh draws per level. -> (total, [L]).

    total = sum_l w_l E|s_theta - s|^2 / sum_l w_l E|s|^2 with w_l = std_l^2, the objectives' own
    weighting (one level: the plain ratio). Unweighted, the levels with std -> 0 would dominate:
    their scores are large and no objective's loss resolves them (its weight vanishes there).
    """
    cs, alphas, stds = levels

    def one(i):
        m = noised(mix, alphas[i], stds[i])
        x = m.sample(jax.random.fold_in(key, i), n)
        target = m.score(x)
        err = score_fn(x, jnp.full((n,), cs[i])) - target
        return jnp.mean(score_losses.sq_norm(err)), jnp.mean(score_losses.sq_norm(target))

    err, norm = jax.lax.map(one, jnp.arange(cs.shape[0]))
    w = jnp.square(stds) if cs.shape[0] > 1 else jnp.ones_like(stds)
    return jnp.sum(w * err) / jnp.sum(w * norm), err / norm


def draw_samples(config: ml_collections.ConfigDict, score_fn, key: jax.Array) -> jax.Array:
    """config.sample.num points from the learned score with config.sample.sampler. -> [N,2]."""
    s, f = config.sample, config.diffusion
    shape = (s.num, 2)
    k_init, k_run = jax.random.split(key)
    if s.sampler == "langevin":
        x0 = s.init_std * jax.random.normal(k_init, shape)
        sigma = f.sigma if f.objective == "dsm" else 0.0
        return score_samplers.langevin(score_fn, k_run, x0, s.step_size, s.steps, sigma)
    if s.sampler == "als":
        # The widest level is close to N(0, sigma_max^2) when sigma_max spans the data.
        x0 = f.sigma_max * jax.random.normal(k_init, shape)
        return score_samplers.annealed_langevin(
            score_fn, k_run, x0, ncsn_sigmas(config), s.steps_per_sigma, s.langevin_eps
        )
    sde = build_sde(config)
    if s.sampler == "ode":
        return score_samplers.ode_sample(sde, score_fn, key, shape, s.steps, s.eps, s.ode_method)[0]
    n_corrector = s.corrector_steps if s.sampler == "pc" else 0
    return score_samplers.pc_sample(sde, score_fn, key, shape, s.steps, s.snr, n_corrector, s.eps)[
        0
    ]


def mode_report(mix: GaussianMixture, x: np.ndarray) -> dict:
    """Nearest-mode weights [K], their largest gap to the true weights, and the mean distance."""
    x = np.asarray(x)
    finite = np.all(np.isfinite(x), axis=-1)
    x = x[finite]
    means, weights = np.asarray(mix.means), np.asarray(mix.weights)
    nonfinite = int((~finite).sum())
    if len(x) == 0:
        nan = float("nan")
        return {"weights": np.full_like(weights, nan), "weight_error": nan, "mean_dist": nan,
                "nonfinite": nonfinite}  # fmt: skip
    d = np.linalg.norm(x[:, None, :] - means[None], axis=-1)
    frac = np.bincount(d.argmin(-1), minlength=len(weights)) / len(x)
    return {
        "weights": frac,
        "weight_error": float(np.abs(frac - weights).max()),
        "mean_dist": float(d.min(-1).mean()),
        "nonfinite": nonfinite,
    }


def _exact_draws(mix: GaussianMixture, n: int, seed: int) -> np.ndarray:
    """n draws from mix in numpy: a reference that costs no XLA compilations. -> [n, D]."""
    means, stds, weights = (np.asarray(v, np.float64) for v in mix)
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), n, p=weights / weights.sum())
    return means[comp] + stds[comp, None] * rng.normal(size=(n, means.shape[1]))


def _fmt(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(w):.3f}" for w in v) + "]"


def run(config: ml_collections.ConfigDict, workdir: str, force: bool = False) -> bool:
    """Train a toy config in workdir (resuming from its latest checkpoint), evaluate and sample.

    Returns True when train.steps are done, False when stopped early by SIGTERM/SIGINT (after a
    checkpoint). Writes config.json, checkpoints/, metrics.jsonl, tb/, samples.npz, samples.png.
    """
    check_config(config)
    if jax.process_count() > 1:
        raise UserError("toy runs are single-process: drop --num_processes/--coordinator")
    mix = build_density(config)
    model = build_model(config)
    energy = config.diffusion.parameterization == "energy"
    apply_fn = lambda p, x, c: model.apply({"params": p}, x, c)
    score = score_losses.as_score(apply_fn, energy)
    loss_fn = build_loss(config, apply_fn, mix)
    levels = noise_levels(config)
    write_config(workdir, config, force)

    t = config.train
    tx = make_optimizer(t)
    # Committed to one device like a restored state, so fresh and resumed runs share programs.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    init = jax.jit(lambda: create_state(_init_fn(model), tx, config.seed), out_shardings=device)
    # Data, evaluation and sampling keys must be independent of the state's keys, which are
    # split(PRNGKey(seed)); with threefry, fold_in(key, i) equals split(key)[i], so small indices
    # of the seed's key would replay the loss's noise as the data's (x and z correlated).
    streams = jax.random.fold_in(jax.random.PRNGKey(config.seed), _STREAMS)
    k_data, k_eval, k_sample = jax.random.split(streams, 3)

    mngr = checkpoint.manager(workdir, t.keep_checkpoints)
    fresh = init()
    if mngr.latest_step() is not None:
        # An unreadable latest step falls back to the one before; it is moved aside, not deleted.
        state, _ = checkpoint.restore_latest(mngr, abstract_state(config), move_aside=True)
    else:
        state = fresh

    update = make_update(loss_fn, tx, t.ema_decay, t.skip_nonfinite)

    def chunk(state: TrainState) -> tuple[TrainState, dict]:
        def body(state, _):
            # The batch depends on (seed, step) only, so a resumed run sees the same data.
            x = mix.sample(jax.random.fold_in(k_data, state.step), t.batch_size)
            return update(state, {"x": x})

        return jax.lax.scan(body, state, None, length=t.steps_per_call)

    train_chunk = jax.jit(chunk, donate_argnums=0)
    n_eval = config.eval.num
    eval_error = jax.jit(
        lambda params, step: score_error(
            lambda x, c: score(params, x, c), mix, levels, jax.random.fold_in(k_eval, step), n_eval
        )
    )
    err_init = float(eval_error(fresh.params, 0)[0])

    start, total = int(state.step), t.steps
    if start < total and start % t.steps_per_call:
        raise UserError(
            f"the run resumes at step {start}, not a multiple of train.steps_per_call="
            f"{t.steps_per_call}: use the steps_per_call it was trained with"
        )
    writer = MetricWriter(workdir)
    if start == 0:
        writer.write(0, {"score_error": err_init})
    if start >= total:
        print(f"{workdir}: already trained to step {start} (train.steps={total})")
    t0, done, scalars = time.perf_counter(), start, {}
    with stop_requests() as stop:
        for step in range(start, total, t.steps_per_call):
            state, metrics = train_chunk(state)
            done = step + t.steps_per_call
            bad = np.asarray(jax.device_get(metrics["nonfinite"]))
            if bad.any() and not t.skip_nonfinite:
                writer.close()
                raise UserError(
                    f"loss or gradients became NaN/Inf at step {step + int(bad.argmax()) + 1}; "
                    f"the last good checkpoint (step {mngr.latest_step()}) is kept: lower "
                    "train.lr, or set train.skip_nonfinite=True to skip such steps"
                )
            if done % t.log_every == 0 or done == total:
                scalars = mean_metrics(metrics)
                scalars["score_error"] = float(eval_error(state.params, done)[0])
                writer.write(done, scalars)
            if done % t.checkpoint_every == 0 or done == total or stop:
                checkpoint.save(mngr, state, {"step": done, "data_step": done})
            if stop:
                break
    seconds = time.perf_counter() - t0
    if stop:
        writer.close()
        print(f"stopped by {signal.Signals(stop[0]).name} at step {done}: rerun to resume")
        return False

    final = {
        "score_error": float(eval_error(state.params, total)[0]),
        "score_error_ema": float(eval_error(state.ema_params, total)[0]),
    }
    # Samples come from the EMA weights, as in the image runs.
    ema = state.ema_params
    x = jax.jit(lambda p: draw_samples(config, lambda y, c: score(p, y, c), k_sample))(ema)
    x = np.asarray(jax.device_get(x))
    report = mode_report(mix, x)
    exact = mode_report(mix, _exact_draws(mix, len(x), config.seed))
    final.update(
        mode_weight_error=report["weight_error"],
        mean_dist=report["mean_dist"],
        nonfinite_samples=report["nonfinite"],
    )
    writer.write(total, final)
    writer.close()
    _write_samples(workdir, mix, x, report)

    if start < total:
        print(
            f"trained steps {start}..{total} in {seconds:.1f} s; final loss {scalars['loss']:.4f}"
        )
    print(
        f"score error (relative MSE): init {err_init:.4f} -> end {final['score_error']:.4f} "
        f"(EMA {final['score_error_ema']:.4f})"
    )
    print(
        f"{config.sample.sampler} samples: mode weights {_fmt(report['weights'])} vs true "
        f"{_fmt(mix.weights)} (max gap {report['weight_error']:.3f})"
    )
    print(
        f"mean distance to nearest mean {report['mean_dist']:.3f} (exact draws "
        f"{exact['mean_dist']:.3f}); {report['nonfinite']} non-finite; "
        f"{os.path.join(workdir, 'samples.png')}"
    )
    return True


def _write_samples(workdir: str, mix: GaussianMixture, x: np.ndarray, report: dict) -> None:
    """samples.npz (x, true and sampled weights) and samples.png (scatter with the means)."""
    means, stds = np.asarray(mix.means), np.asarray(mix.stds)
    np.savez(
        os.path.join(workdir, "samples.npz"),
        x=x,
        means=means,
        weights=np.asarray(mix.weights),
        sampled_weights=report["weights"],
    )
    lo, hi = means.min(0) - 4 * stds.max() - 1.0, means.max(0) + 4 * stds.max() + 1.0
    half = 0.5 * float((hi - lo).max())
    mid = 0.5 * (lo + hi)
    extent = (mid[0] - half, mid[0] + half, mid[1] - half, mid[1] + half)
    save_scatter(x, os.path.join(workdir, "samples.png"), extent, marks=means)
