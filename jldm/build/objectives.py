"""Training objectives as registered values: each knows its loss, what the network output means,
and which samplers apply. Resolved once from config.diffusion.objective by `get`.

The same network serves every objective; only what its inputs and output mean changes.
- ddpm: discrete time t; the UNet predicts eps, x0 or v (diffusion.prediction).
- score objectives: the network is a score model conditioned on c, a noise level sigma (ncsn,
  dsm) or a time t (vesde, vpsde, subvpsde), with x_c = alpha(c) x0 + std(c) z. On images the
  UNet sees c_in * x_c, c_in = 1 / sqrt(alpha^2 + std^2) (unit variance for unit-variance data,
  so VE inputs of std 50 stay in range) and the time input 999 * tau, tau in [0, 1] the
  position of c along the process.
  - score parameterisation: s = -u / std, u the UNet output (u estimates the noise z);
  - energy parameterisation: E = 0.5 |x_c - alpha D|^2 / std^2 with D the UNet output (a
    clean-data estimate), s = -grad_x E, which at D = 0 is the score of N(0, std^2 I).
- esm, ism, sliced, dsm: the score matching objectives of the toy densities (2-D MLP).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build.model import downsample, null_condition, sr_factor, upsample
from jldm.build.noise import build_schedule, build_sde, ncsn_sigmas, noise_coefs
from jldm.diffusion import score_losses
from jldm.diffusion.losses import drop_condition, make_ddpm_loss
from jldm.errors import UserError

# score(params, x [B,H,W,C], c [B], labels [B], train, rngs) -> grad_x log p_c [B,H,W,C]
ScoreNet = Callable[..., jax.Array]
# (config, apply_fn(params, x, c), energy, density) -> loss_fn(params, rng, {"x": x})
ScoreLoss = Callable[..., Callable]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective.

    kind: "discrete" (the network's output under the discrete schedule, integer t) or "score"
    (a score s(x, c)); samplers consume one kind. samplers: the names that apply, the first the
    default. images/toy: whether it trains the image UNet / the toy-density MLP. score_loss: the
    loss of a score objective on {"x": [B, ...]} (None for ddpm). check(config.diffusion)
    refuses settings the objective cannot use.
    """

    name: str
    kind: str
    samplers: tuple[str, ...]
    images: bool
    toy: bool
    score_loss: ScoreLoss | None = None
    check: Callable[[ml_collections.ConfigDict], None] = lambda f: None


def _esm(config, apply_fn, energy, density):
    return score_losses.make_esm_loss(apply_fn, density.score, energy)


def _ism(config, apply_fn, energy, density):
    return score_losses.make_ism_loss(apply_fn, energy)


def _sliced(config, apply_fn, energy, density):
    f = config.diffusion
    return score_losses.make_sliced_loss(
        apply_fn, f.n_projections, f.probe, f.variance_reduction, energy
    )


def _dsm(config, apply_fn, energy, density):
    return score_losses.make_dsm_loss(apply_fn, config.diffusion.sigma, energy)


def _ncsn(config, apply_fn, energy, density):
    return score_losses.make_ncsn_loss(apply_fn, ncsn_sigmas(config), energy)


def _sde(config, apply_fn, energy, density):
    return score_losses.make_sde_loss(apply_fn, build_sde(config), config.diffusion.eps_t, energy)


def _positive(name: str, value) -> None:
    if not value > 0:
        raise UserError(f"diffusion.{name}={value} must be > 0: set a positive value")


def _sigma_range(f) -> None:
    if not 0 < f.sigma_min < f.sigma_max:
        raise UserError(
            f"diffusion.sigma_min={f.sigma_min}, sigma_max={f.sigma_max}: need "
            "0 < sigma_min < sigma_max"
        )


def _check_ncsn(f) -> None:
    _sigma_range(f)
    if f.num_scales < 2:
        raise UserError(f"diffusion.num_scales={f.num_scales} must be >= 2 for ncsn")


def _check_vesde(f) -> None:
    _sigma_range(f)
    _positive("eps_t", f.eps_t)


def _check_vp(f) -> None:
    if not 0 < f.beta_min <= f.beta_max:
        raise UserError(
            f"diffusion.beta_min={f.beta_min}, beta_max={f.beta_max}: need 0 < beta_min <= beta_max"
        )
    _positive("eps_t", f.eps_t)


def _check_sliced(f) -> None:
    if f.n_projections < 1:
        raise UserError(f"diffusion.n_projections={f.n_projections} must be >= 1")
    if f.probe not in ("rademacher", "gaussian"):
        raise UserError(f"diffusion.probe={f.probe!r}: use rademacher or gaussian")


def _check_ddpm(f) -> None:
    if f.parameterization != "score":
        raise UserError("diffusion.parameterization=energy needs a score objective (ncsn, *sde)")
    if f.prediction not in ("eps", "x0", "v"):
        raise UserError(f"diffusion.prediction={f.prediction!r}: use eps, x0 or v")
    if not isinstance(f.timesteps, int) or f.timesteps < 1:
        raise UserError(f"diffusion.timesteps={f.timesteps} must be an integer >= 1")
    if not 0 <= f.cond_drop < 1:
        raise UserError(f"diffusion.cond_drop={f.cond_drop} must be in [0, 1)")


_SDE_SAMPLERS = ("pc", "em", "ode", "dpmpp2m", "heun")
REGISTRY: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "ddpm", "discrete", ("ddpm", "ddim", "dpmpp2m", "heun"), True, False, check=_check_ddpm
        ),
        Objective("ncsn", "score", ("als",), True, True, _ncsn, _check_ncsn),
        Objective("vesde", "score", _SDE_SAMPLERS, True, True, _sde, _check_vesde),
        Objective("vpsde", "score", _SDE_SAMPLERS, True, True, _sde, _check_vp),
        Objective("subvpsde", "score", _SDE_SAMPLERS, True, True, _sde, _check_vp),
        Objective("esm", "score", ("langevin",), False, True, _esm),
        Objective("ism", "score", ("langevin",), False, True, _ism),
        Objective("sliced", "score", ("langevin",), False, True, _sliced, _check_sliced),
        Objective(
            "dsm", "score", ("langevin",), False, True, _dsm, lambda f: _positive("sigma", f.sigma)
        ),
    )
}


def get(config: ml_collections.ConfigDict, toy: bool = False) -> Objective:
    """The objective of config.diffusion, checked against the run's kind and its settings."""
    f = config.diffusion
    names = [o.name for o in REGISTRY.values() if (o.toy if toy else o.images)]
    if f.objective not in names:
        what = "a toy objective" if toy else "an image objective"
        raise UserError(
            f"diffusion.objective={f.objective!r} is not {what}: use one of {', '.join(names)}"
        )
    objective = REGISTRY[f.objective]
    if f.parameterization not in ("score", "energy"):
        raise UserError(f"diffusion.parameterization={f.parameterization!r}: use score or energy")
    objective.check(f)
    check_sampler(objective, config.sample.sampler, "sample.sampler")
    return objective


def check_sampler(objective: Objective, sampler: str, what: str = "sampler") -> None:
    """The sampler must be one the objective defines."""
    if sampler not in objective.samplers:
        raise UserError(
            f"{what} {sampler!r} does not apply to objective {objective.name!r}: "
            f"use {' or '.join(objective.samplers)}"
        )


def make_score_net(config: ml_collections.ConfigDict, model) -> ScoreNet:
    """score(params, x, c, labels, train=False, rngs=None): the UNet read as a score model."""
    energy = config.diffusion.parameterization == "energy"

    def score(params, x, c, labels, train=False, rngs=None):
        alpha, std, tau = (v.reshape(-1, 1, 1, 1) for v in noise_coefs(config, c))
        c_in = jax.lax.rsqrt(jnp.square(alpha) + jnp.square(std))

        def unet(y):
            return model.apply(
                {"params": params}, c_in * y, 999.0 * tau.reshape(-1), labels, train, rngs=rngs
            )

        if not energy:
            return -unet(x) / std

        def total_energy(y):
            # Samples do not interact, so grad of the batch sum is each sample's gradient.
            return 0.5 * jnp.sum(jnp.square((y - alpha * unet(y)) / std))

        return -jax.grad(total_energy)(x)

    return score


def make_net(config: ml_collections.ConfigDict, model) -> Callable:
    """net(params, x, c, labels, train=False, rngs=None): what the objective's samplers consume.

    discrete: the UNet's prediction at integer times c; score: the score at noise levels c.
    """
    if REGISTRY[config.diffusion.objective].kind == "score":
        return make_score_net(config, model)

    def net(params, x, t, labels, train=False, rngs=None):
        return model.apply({"params": params}, x, t, labels, train, rngs=rngs)

    return net


def _score_loss(config, objective: Objective, model, null) -> Callable:
    """Score objectives on image batches {"image", "label"}; the inner loss's scale is kept."""
    f = config.diffusion
    net = make_score_net(config, model)

    def loss_fn(params, rng, batch):
        k_drop, k_dropout, k_loss = jax.random.split(rng, 3)
        labels = batch["label"]
        if f.cond_drop > 0:
            labels = drop_condition(k_drop, labels, null, f.cond_drop)

        def apply_fn(p, x, c):
            return net(p, x, c, labels, True, {"dropout": k_dropout})

        inner = objective.score_loss(config, apply_fn, False, None)
        return inner(params, k_loss, {"x": batch["image"]})

    return loss_fn


def _ddpm_loss(config, model, null) -> Callable:
    factor = sr_factor(config)

    def loss_for(extra):
        def apply_fn(params, x, t, labels, train, rngs):
            if extra is not None:
                x = jnp.concatenate([x, extra], axis=-1)
            return model.apply({"params": params}, x, t, labels, train, rngs=rngs)

        return make_ddpm_loss(
            apply_fn,
            build_schedule(config),
            config.diffusion.prediction,
            null_label=null,
            cond_drop=config.diffusion.cond_drop,
        )

    if factor == 1:
        return loss_for(None)

    def sr_loss(params, rng, batch):
        x = batch["image"]
        return loss_for(upsample(downsample(x, factor), x.shape[1]))(params, rng, batch)

    return sr_loss


def build_loss(config: ml_collections.ConfigDict, model) -> Callable:
    """loss_fn(params, rng, batch) -> (loss, metrics) of config.diffusion on image batches.

    batch = {"image": [B,H,W,C] in [-1, 1] (or scaled latents), "label": [B] or [B, L]}; labels
    become the null condition with probability diffusion.cond_drop (classifier-free guidance).
    """
    objective = get(config)
    null = null_condition(config)
    if objective.kind == "discrete":
        return _ddpm_loss(config, model, null)
    if sr_factor(config) > 1:
        raise UserError("model.low_res_factor > 1 (super-resolution) needs objective=ddpm")
    return _score_loss(config, objective, model, null)
