"""Training objectives as registered values: each knows its loss, what the network output means,
and the samplers it cannot take, with the reason (every other sampler applies: each reads the
network as a denoiser in one frame, jldm.build.frames). Resolved once from
config.diffusion.objective by `get`.

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
- edm: x = x0 + sigma z, the UNet wrapped as Karras et al.'s preconditioned denoiser D(x, sigma)
  (jldm.diffusion.edm), log-normal training sigmas.
- flow: the linear path x_t = (1 - t) x0 + t z, the UNet predicts the velocity z - x0 at time
  input 999 t (jldm.diffusion.flow_matching).
- esm, ism, sliced, dsm: the score matching objectives of the toy densities (2-D MLP).
diffusion.weighting reweighs the noise levels of the image objectives (jldm.diffusion.weighting):
min_snr everywhere, likelihood for the SDEs.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build import noise, samplers
from jldm.build.model import downsample, null_condition, sr_factor, upsample
from jldm.build.noise import build_schedule, build_sde, ncsn_sigmas, noise_coefs
from jldm.diffusion import edm, flow_matching, score_losses, weighting
from jldm.diffusion.losses import drop_condition, make_ddpm_loss
from jldm.errors import UserError

# score(params, x [B,H,W,C], c [B], labels [B], train, rngs) -> grad_x log p_c [B,H,W,C]
ScoreNet = Callable[..., jax.Array]
# (config, apply_fn(params, x, c), energy, density) -> loss_fn(params, rng, {"x": x})
ScoreLoss = Callable[..., Callable]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective.

    kind: "discrete" (the network's output under the discrete schedule, integer t), "score"
    (a score s(x, c)), "denoiser" (EDM's D(x, sigma)) or "velocity" (v(x, t) of flow matching).
    cannot: the reason it cannot take any sampler but langevin (None: it takes every sampler).
    images/toy: whether it trains the image UNet / the toy-density MLP. score_loss: the loss of a
    score objective on {"x": [B, ...]} (None for the others). check(config.diffusion) refuses
    settings the objective cannot use. weightings: the diffusion.weighting values it takes.
    image_loss(config, model, null) -> loss_fn on image batches, where not ddpm's or the score
    objectives' own.
    """

    name: str
    kind: str
    cannot: str | None
    images: bool
    toy: bool
    score_loss: ScoreLoss | None = None
    check: Callable[[ml_collections.ConfigDict], None] = lambda f: None
    weightings: tuple[str, ...] = ("default",)
    image_loss: Callable | None = None


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
    return score_losses.make_ncsn_loss(
        apply_fn, ncsn_sigmas(config), energy, *noise.weighting_of(config.diffusion)
    )


def _sde(config, apply_fn, energy, density):
    f = config.diffusion
    return score_losses.make_sde_loss(
        apply_fn, build_sde(config), f.eps_t, energy, *noise.weighting_of(f)
    )


def _edm_loss(config, model, null) -> Callable:
    f = config.diffusion
    name, gamma = noise.weighting_of(f)
    factor = None
    if name == "min_snr":
        factor = lambda s: weighting.min_snr_factor("edm", 1.0, s, gamma, f.sigma_data)
    return edm.make_edm_loss(
        make_net(config, model), f.sigma_data, f.p_mean, f.p_std, factor, null, f.cond_drop
    )


def _flow_loss(config, model, null) -> Callable:
    f = config.diffusion
    name, gamma = noise.weighting_of(f)
    factor = None
    if name == "min_snr":
        factor = lambda t: weighting.min_snr_factor("velocity", 1.0 - t, t, gamma)
    return flow_matching.make_flow_loss(
        make_net(config, model),
        f.time_sampling,
        f.logit_mean,
        f.logit_std,
        factor,
        null,
        f.cond_drop,
    )


_ONE_LEVEL = "learns the score at one noise level only, so it has no process to sample along"
_SNR = ("default", "min_snr")
_SDE = (*_SNR, "likelihood")
_IMAGES, _TOY, _BOTH = (True, False), (False, True), (True, True)
REGISTRY: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("ddpm", "discrete", None, *_IMAGES, None, noise.check_ddpm, _SNR),
        Objective("ncsn", "score", None, *_BOTH, _ncsn, noise.check_ncsn, _SNR),
        Objective("vesde", "score", None, *_BOTH, _sde, noise.check_vesde, _SDE),
        Objective("vpsde", "score", None, *_BOTH, _sde, noise.check_vp, _SDE),
        Objective("subvpsde", "score", None, *_BOTH, _sde, noise.check_vp, _SDE),
        Objective("edm", "denoiser", None, *_IMAGES, None, noise.check_edm, _SNR, _edm_loss),
        Objective("flow", "velocity", None, *_IMAGES, None, noise.check_flow, _SNR, _flow_loss),
        Objective("esm", "score", _ONE_LEVEL, *_TOY, _esm),
        Objective("ism", "score", _ONE_LEVEL, *_TOY, _ism),
        Objective("sliced", "score", _ONE_LEVEL, *_TOY, _sliced, noise.check_sliced),
        Objective("dsm", "score", _ONE_LEVEL, *_TOY, _dsm,
                  lambda f: noise.positive("sigma", f.sigma)),
    )
}  # fmt: skip


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
    noise.check_weighting(objective.name, objective.weightings, f)
    samplers.check_sampler(objective, config.sample.sampler, "sample.sampler")
    return objective


def make_score_net(config: ml_collections.ConfigDict, model) -> ScoreNet:
    """score(params, x, c, labels, train=False, rngs=None): the UNet read as a score model."""
    energy = config.diffusion.parameterization == "energy"
    coefs = noise_coefs(config)

    def score(params, x, c, labels, train=False, rngs=None):
        alpha, std, tau = (v.reshape(-1, 1, 1, 1) for v in coefs(c))
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


def network_output(config: ml_collections.ConfigDict) -> str:
    """What the network predicts: ddpm's diffusion.prediction (eps, x0, v), a score objective's
    diffusion.parameterization (score, energy), "denoiser" (edm) or "velocity" (flow)."""
    f = config.diffusion
    kind = REGISTRY[f.objective].kind
    return {"discrete": f.get("prediction"), "score": f.parameterization}.get(kind, kind)


def make_net(config: ml_collections.ConfigDict, model) -> Callable:
    """net(params, x, c, labels, train=False, rngs=None): what the objective's samplers consume.

    discrete: the UNet's prediction at integer times c; score: the score at noise levels c;
    denoiser: EDM's D(x, sigma = c); velocity: the flow's v(x, t = c), time input 999 t.
    """
    kind = REGISTRY[config.diffusion.objective].kind
    if kind == "score":
        return make_score_net(config, model)
    sigma_data = config.diffusion.get("sigma_data", 0.5)

    def net(params, x, c, labels, train=False, rngs=None):
        def unet(x_in, t_in):
            return model.apply({"params": params}, x_in, t_in, labels, train, rngs=rngs)

        if kind == "denoiser":
            return edm.denoise(unet, x, c, sigma_data)
        return unet(x, 999.0 * c if kind == "velocity" else c)

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
            null,
            config.diffusion.cond_drop,
            *noise.weighting_of(config.diffusion),
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
    if objective.image_loss is not None:
        return objective.image_loss(config, model, null)
    return _score_loss(config, objective, model, null)
