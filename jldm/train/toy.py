"""Score and energy MLPs on 2-D toy densities, as a task of the training loop.

The data are exact draws from a Gaussian mixture (data.name toy_mixture) or a ring of Gaussians
(toy_ring), so the true score of the data, and of the data noised at any level, is known in
closed form. That gives what image runs cannot: the score error (jldm.eval.density) of the
learned score against the exact one on fresh draws, over the noise levels the objective trains
at; and the sampled mode weights against the true weights.

Objectives (diffusion.objective) and what the network's condition c is:
- esm, ism, sliced: the clean density, c a constant 0; sampled by Langevin dynamics.
- dsm: one noise level diffusion.sigma, c = sigma (log-conditioned); Langevin at that sigma.
- ncsn: the geometric ladder sigma_max..sigma_min, c = sigma (log); annealed Langevin (als).
- vesde, vpsde, subvpsde: continuous-time DSM, c = t; pc, em (pc without corrector) or ode.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jldm.build import objectives
from jldm.build import samplers as sampler_registry
from jldm.build import state as build_state
from jldm.build.noise import build_sde, ncsn_sigmas
from jldm.build.state import TrainState, create_state, make_optimizer
from jldm.data.paths import join
from jldm.diffusion import score_losses
from jldm.diffusion import toy as toy_density
from jldm.diffusion.toy import GaussianMixture
from jldm.errors import UserError
from jldm.eval import density
from jldm.eval.scatter import save_scatter
from jldm.nn.mlp import ScoreMLP
from jldm.sampling.shards import save_npz
from jldm.train.fit import Task
from jldm.train.step import make_update

logger = logging.getLogger(__name__)

DATASETS = ("toy_mixture", "toy_ring")

# Tag of the toy runs' own key streams (the bytes of "toy").
_STREAMS = 0x746F79


def _positive(name: str, value) -> None:
    if not value > 0:
        raise UserError(f"{name}={value} must be > 0: set a positive value")


def _check_density(d: ml_collections.ConfigDict) -> None:
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


def check_config(config: ml_collections.ConfigDict) -> None:
    """The settings of a toy run that ranges.check_config cannot judge alone."""
    s = config.sample
    _check_density(config.data)
    objectives.get(config, toy=True)
    sampler = sampler_registry.get(s.sampler)
    sampler_registry.check_steps(sampler, config, sampler.default_steps(config))
    for name, used in (("step_size", "langevin"), ("als_step", "als")):
        if s.sampler == used:
            _positive(f"sample.{name}", s[name])


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


def _device():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def abstract_state(config: ml_collections.ConfigDict, tx=None) -> TrainState:
    """Shapes, dtypes and (one-device) shardings of a toy run's TrainState, for restoring it."""
    init = _init_fn(build_model(config))
    shapes = build_state.abstract_state(init, tx or make_optimizer(config.train), config.seed)
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=_device()), shapes
    )


def noise_levels(config: ml_collections.ConfigDict) -> density.Levels:
    """(c, alpha, std), each [L]: the conditions the objective trains at and their noise."""
    f = config.diffusion
    sde = build_sde(config)
    if sde is not None:
        t = jnp.linspace(f.eps_t, sde.T, config.eval.levels)
        alpha, std = sde.mean_coef_std(t)
        return t, alpha, std
    if f.objective == "ncsn":
        sigmas = ncsn_sigmas(config)
        return sigmas, jnp.ones_like(sigmas), sigmas
    sigma = jnp.full((1,), f.sigma if f.objective == "dsm" else 0.0, jnp.float32)
    return sigma, jnp.ones_like(sigma), sigma


def toy_task(config: ml_collections.ConfigDict, workdir: str, writer=None) -> Task:
    """Train on exact draws of the density; log the score error; finish with samples (their
    figures to writer, as jldm.train.fit's)."""
    check_config(config)
    if jax.process_count() > 1:
        raise UserError("toy runs are single-process: drop --num_processes/--coordinator")
    mix = build_density(config)
    model = build_model(config)
    energy = config.diffusion.parameterization == "energy"
    apply_fn = lambda p, x, c: model.apply({"params": p}, x, c)
    score = score_losses.as_score(apply_fn, energy)
    objective = objectives.get(config, toy=True)
    loss_fn = objective.score_loss(config, apply_fn, energy, mix)
    levels = noise_levels(config)
    t = config.train
    tx = make_optimizer(t)
    # Committed to one device like a restored state, so fresh and resumed runs share programs.
    init = jax.jit(lambda: create_state(_init_fn(model), tx, config.seed), out_shardings=_device())
    # Data, evaluation and sampling keys must be independent of the state's keys, which are
    # split(PRNGKey(seed)); with threefry, fold_in(key, i) equals split(key)[i], so small indices
    # of the seed's key would replay the loss's noise as the data's (x and z correlated).
    streams = jax.random.fold_in(jax.random.PRNGKey(config.seed), _STREAMS)
    k_data, k_eval, k_sample = jax.random.split(streams, 3)
    update = make_update(loss_fn, tx, t.ema_decay, t.skip_nonfinite)

    def chunk(state: TrainState, _) -> tuple[TrainState, dict]:
        def body(state, _):
            # The batch depends on (seed, step) only, so a resumed run sees the same data.
            x = mix.sample(jax.random.fold_in(k_data, state.step), t.batch_size)
            return update(state, {"x": x})

        return jax.lax.scan(body, state, None, length=t.steps_per_call)

    n_eval = config.eval.num
    error = jax.jit(
        lambda params, step: density.score_error(
            lambda x, c: score(params, x, c), mix, levels, jax.random.fold_in(k_eval, step), n_eval
        )[0]
    )

    def inputs(start: int, stop: int):
        return (None for _ in range(start, stop, t.steps_per_call))  # data drawn on device

    def finish(state: TrainState) -> None:
        sampler = sampler_registry.get(config.sample.sampler)
        plan = sampler_registry.Plan(config, (config.sample.num, 2), sampler.default_steps(config))
        sample = sampler.build(plan)

        def draw(params):
            return sample(lambda y, c: score(params, y, c), k_sample)

        # Samples come from the EMA weights, as in the image runs.
        x = np.asarray(jax.device_get(jax.jit(draw)(state.ema_params)))
        err_init = float(error(init().params, 0))
        final = {
            "score_error": float(error(state.params, t.steps)),
            "score_error_ema": float(error(state.ema_params, t.steps)),
        }
        report_samples(config, workdir, mix, x, err_init, final, writer)

    return Task(
        name="train",
        section=t,
        shapes=abstract_state(config, tx),
        init=init,
        step=jax.jit(chunk, donate_argnums=0),
        inputs=inputs,
        evaluate=lambda state, step: {"score_error": float(error(state.params, step))},
        finish=finish,
    )


def _fmt(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(w):.3f}" for w in v) + "]"


def report_samples(
    config, workdir: str, mix: GaussianMixture, x, err_init: float, final: dict, writer=None
):
    """Mode report of samples x [N,2]: metrics.jsonl and writer (None: config.train.writer's),
    samples.npz, samples.png and a summary."""
    from jldm.train.metrics_log import MetricWriter
    from jldm.train.writers import from_config

    report = density.mode_report(mix, x)
    exact = density.mode_report(mix, density.exact_draws(mix, len(x), config.seed))
    final = dict(
        final,
        mode_weight_error=report["weight_error"],
        mean_dist=report["mean_dist"],
        nonfinite_samples=report["nonfinite"],
    )
    log = MetricWriter(workdir, writer=from_config(config) if writer is None else writer)
    log.write(config.train.steps, final)
    log.close()
    means, stds = np.asarray(mix.means), np.asarray(mix.stds)
    save_npz(
        join(workdir, "samples.npz"),
        x=x,
        means=means,
        weights=np.asarray(mix.weights),
        sampled_weights=report["weights"],
    )
    lo, hi = means.min(0) - 4 * stds.max() - 1.0, means.max(0) + 4 * stds.max() + 1.0
    half = 0.5 * float((hi - lo).max())
    mid = 0.5 * (lo + hi)
    extent = (mid[0] - half, mid[0] + half, mid[1] - half, mid[1] + half)
    save_scatter(x, join(workdir, "samples.png"), extent, marks=means)
    logger.info(
        f"score error (relative MSE): init {err_init:.4f} -> end {final['score_error']:.4f} "
        f"(EMA {final['score_error_ema']:.4f})"
    )
    logger.info(
        f"{config.sample.sampler} samples: mode weights {_fmt(report['weights'])} vs true "
        f"{_fmt(mix.weights)} (max gap {report['weight_error']:.3f})"
    )
    logger.info(
        f"mean distance to nearest mean {report['mean_dist']:.3f} (exact draws "
        f"{exact['mean_dist']:.3f}); {report['nonfinite']} non-finite; "
        f"{join(workdir, 'samples.png')}"
    )
