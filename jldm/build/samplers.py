"""Samplers as registered values: each builds its pure sampling function from a Plan, and knows
its network evaluations (NFE) for a step count and the step count for an NFE budget.

A discrete sampler (ddpm, ddim) consumes the network's prediction under the discrete schedule; a
score sampler (langevin, als, pc, em, ode) consumes a score s(x, c); euler consumes the flow's
velocity v(x, t); dpmpp2m and heun take any of these and EDM's denoiser D(x, sigma), read as a
denoiser (jldm.build.flow; heun steps a flow's velocity in t). The meaning of `steps`: ddim,
pc, em, ode, dpmpp2m, heun, euler, langevin: steps of the chain; als: steps per noise level;
ddpm: ignored (all T steps). Every setting is read from the config when the sampler is built,
never inside the traced function.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build import flow
from jldm.build.noise import build_schedule, build_sde, ncsn_sigmas
from jldm.diffusion import samplers as discrete
from jldm.diffusion import score_samplers
from jldm.diffusion.schedules import Schedule
from jldm.errors import UserError

# sample(fn, key, known=None) -> samples of Plan.shape. fn: the (guided) network, fn(x, c) ->
# prediction (discrete samplers) or score (score samplers); known: (x0 [N,...], mask [N,...,1])
# to keep (inpainting, discrete samplers). Pure: every setting was read when it was built.
SampleFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a sampler is built from: the run's config, the samples' shape [N, ...], the step
    count, DDIM's eta, and clip: clip the x0 estimates to [-1, 1] (pixel-space, discrete)."""

    config: ml_collections.ConfigDict
    shape: tuple[int, ...]
    steps: int
    eta: float = 0.0
    clip: bool = True


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """Sampling a pretrained model on its scheduler's timestep grid (diffusers' spacing).

    fn(x, t [B]) -> the (guided) prediction; the grid's pairs (t, t_prev), t_prev < 0 meaning
    alpha_bar = 1, are scanned by the sampler's grid step.
    """

    fn: Callable
    schedule: Schedule
    prediction: str
    clip: bool
    shape: tuple[int, ...]
    eta: float = 0.0
    snr: float = 0.16
    corrector_steps: int = 1


# (plan) -> step(key, x, t, t_prev) -> x at t_prev
GridStep = Callable[[GridPlan], Callable[..., jax.Array]]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler: build(plan) -> sample(fn, key, known); nfe(config, steps): network evaluations per
    sample (unguided); steps_for(config, nfe): the step count that costs about nfe;
    default_steps(config); max_steps(config) (None: unbounded); inpaints: takes known.
    grid: how it steps a pretrained model's timestep grid (None: not offered there);
    ancestral: on that grid it draws fresh noise every step (eta = 1, alpha_bar = 1 at the end).
    """

    name: str
    kind: str
    build: Callable[[Plan], SampleFn]
    nfe: Callable[[ml_collections.ConfigDict, int], int]
    steps_for: Callable[[ml_collections.ConfigDict, int], int]
    default_steps: Callable[[ml_collections.ConfigDict], int] = lambda c: c.sample.steps
    max_steps: Callable[[ml_collections.ConfigDict], int | None] = lambda c: None
    inpaints: bool = False
    grid: GridStep | None = None
    ancestral: bool = False


def _ddpm(p: Plan) -> SampleFn:
    schedule, prediction = build_schedule(p.config), p.config.diffusion.prediction
    return lambda fn, key, known=None: discrete.ddpm_sample(
        fn, schedule, key, p.shape, prediction, p.clip, known=known
    )


def _ddim(p: Plan) -> SampleFn:
    schedule, prediction = build_schedule(p.config), p.config.diffusion.prediction
    return lambda fn, key, known=None: discrete.ddim_sample(
        fn, schedule, key, p.shape, p.steps, p.eta, prediction, p.clip, known=known
    )


def _langevin(p: Plan) -> SampleFn:
    s, f = p.config.sample, p.config.diffusion
    init_std, step_size = s.init_std, s.step_size
    sigma = f.sigma if f.objective == "dsm" else 0.0

    def go(fn, key, known=None):
        k_init, k_run = jax.random.split(key)
        x0 = init_std * jax.random.normal(k_init, p.shape)
        return score_samplers.langevin(fn, k_run, x0, step_size, p.steps, sigma)

    return go


def _als(p: Plan) -> SampleFn:
    sigmas, eps = ncsn_sigmas(p.config), p.config.sample.langevin_eps

    def go(fn, key, known=None):
        # The widest level is close to N(0, sigma_max^2) when sigma_max spans the data.
        k_init, k_run = jax.random.split(key)
        x0 = sigmas[0] * jax.random.normal(k_init, p.shape)
        return score_samplers.annealed_langevin(fn, k_run, x0, sigmas, p.steps, eps)

    return go


def _denoise_final(config: ml_collections.ConfigDict) -> bool:
    """pc, em, ode: end on E[x0 | x_eps] (one more evaluation) instead of x_eps."""
    return bool(config.sample.get("denoise_final", True))


def _pc(corrector: bool) -> Callable[[Plan], SampleFn]:
    def build(p: Plan) -> SampleFn:
        s, sde = p.config.sample, build_sde(p.config)
        snr, n_corr, eps = s.snr, s.corrector_steps if corrector else 0, s.get("eps", 1e-3)
        denoise = _denoise_final(p.config)
        return lambda fn, key, known=None: score_samplers.pc_sample(
            sde, fn, key, p.shape, p.steps, snr, n_corr, eps, denoise
        )[0]

    return build


def _ode(p: Plan) -> SampleFn:
    s, sde = p.config.sample, build_sde(p.config)
    method, eps = s.ode_method, s.get("eps", 1e-3)
    if method not in ("rk4", "heun"):
        raise UserError(f"sample.ode_method={method!r}: use rk4 or heun")
    denoise = _denoise_final(p.config)
    return lambda fn, key, known=None: score_samplers.ode_sample(
        sde, fn, key, p.shape, p.steps, eps, method, denoise
    )[0]


def _grid_ddim(p: GridPlan):
    """DDIM with p.eta (1: the ancestral DDPM posterior step)."""

    def step(key, x, t, t_prev):
        out = p.fn(x, jnp.full((p.shape[0],), t))
        if p.eta > 0:
            noise = jax.random.normal(jax.random.fold_in(key, t), p.shape)
        else:
            noise = jnp.zeros(p.shape)
        # diffusers' DDIMScheduler keeps the network's eps beside a clipped x0: parity.
        return discrete.ddim_step(
            p.schedule,
            x,
            t,
            t_prev,
            out,
            noise,
            p.eta,
            p.prediction,
            p.clip,
            eps_from_clipped=False,
        )

    return step


def _grid_pc(p: GridPlan):
    """corrector_steps Langevin steps at signal-to-noise snr (score -eps_hat / sqrt(1 -
    alpha_bar)) before each ancestral step."""
    ancestral = _grid_ddim(p)
    score = discrete.eps_score(p.fn, p.schedule, p.prediction)

    def step(key, x, t, t_prev):
        k_corr = jax.random.fold_in(jax.random.fold_in(key, t), 1)
        x, _ = score_samplers.langevin_corrector(score, k_corr, x, t, p.snr, p.corrector_steps)
        return ancestral(key, x, t, t_prev)

    return step


def _grid_heun(p: GridPlan):
    """The probability-flow ODE by Heun's method (2 evaluations a step)."""
    return lambda key, x, t, t_prev: discrete.heun_step(
        p.fn, p.schedule, x, t, t_prev, p.prediction
    )


def _ode_per_step(config) -> int:
    return 4 if config.sample.ode_method == "rk4" else 2


def _bounded(config, steps: int) -> int:
    top = flow.max_steps(config)
    return steps if top is None else min(steps, top)


def _at_least_one(n: int) -> int:
    return max(1, int(n))


REGISTRY: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler(
            "ddpm",
            "discrete",
            _ddpm,
            nfe=lambda c, steps: c.diffusion.timesteps,
            steps_for=lambda c, nfe: c.diffusion.timesteps,
            default_steps=lambda c: c.diffusion.timesteps,
            inpaints=True,
            grid=_grid_ddim,
            ancestral=True,
        ),
        Sampler(
            "ddim",
            "discrete",
            _ddim,
            nfe=lambda c, steps: steps,
            steps_for=lambda c, nfe: min(_at_least_one(nfe), c.diffusion.timesteps),
            max_steps=lambda c: c.diffusion.timesteps,
            inpaints=True,
            grid=_grid_ddim,
        ),
        Sampler(
            "langevin",
            "score",
            _langevin,
            nfe=lambda c, steps: steps,
            steps_for=lambda c, nfe: _at_least_one(nfe),
        ),
        Sampler(
            "als",
            "score",
            _als,
            nfe=lambda c, steps: c.diffusion.num_scales * steps + 1,
            steps_for=lambda c, nfe: _at_least_one((nfe - 1) // c.diffusion.num_scales),
            default_steps=lambda c: c.sample.steps_per_sigma,
        ),
        Sampler(
            "pc",
            "score",
            _pc(corrector=True),
            nfe=lambda c, steps: steps * (1 + c.sample.corrector_steps) + _denoise_final(c),
            steps_for=lambda c, nfe: _at_least_one(
                (nfe - _denoise_final(c)) // (1 + c.sample.corrector_steps)
            ),
            grid=_grid_pc,
            ancestral=True,
        ),
        Sampler(
            "em",
            "score",
            _pc(corrector=False),
            nfe=lambda c, steps: steps + _denoise_final(c),
            steps_for=lambda c, nfe: _at_least_one(nfe - _denoise_final(c)),
        ),
        Sampler(
            "ode",
            "score",
            _ode,
            nfe=lambda c, steps: steps * _ode_per_step(c) + _denoise_final(c),
            steps_for=lambda c, nfe: _at_least_one((nfe - _denoise_final(c)) // _ode_per_step(c)),
            grid=_grid_heun,
        ),
        Sampler(
            "dpmpp2m",
            "either",
            flow.dpmpp2m,
            nfe=lambda c, steps: steps,
            steps_for=lambda c, nfe: _bounded(c, _at_least_one(nfe)),
            max_steps=flow.max_steps,
            inpaints=True,
        ),
        Sampler(
            "heun",
            "either",
            flow.heun,
            nfe=lambda c, steps: 2 * steps - 1,
            steps_for=lambda c, nfe: _bounded(c, _at_least_one((nfe + 1) // 2)),
            max_steps=flow.max_steps,
            inpaints=True,
        ),
        Sampler(
            "euler",
            "velocity",
            flow.euler,
            nfe=lambda c, steps: steps,
            steps_for=lambda c, nfe: _at_least_one(nfe),
            inpaints=True,
        ),
    )
}


def get(name: str) -> Sampler:
    """The sampler called name."""
    if name not in REGISTRY:
        raise UserError(f"sampler {name!r} is not known: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


GRID_SAMPLERS = tuple(s.name for s in REGISTRY.values() if s.grid is not None)


def get_for_grid(name: str) -> Sampler:
    """The sampler called name, for a pretrained model's timestep grid."""
    if name not in GRID_SAMPLERS:
        raise UserError(f"--sampler={name} with --pretrained: use one of {GRID_SAMPLERS}")
    return REGISTRY[name]


def check_steps(sampler: Sampler, config: ml_collections.ConfigDict, steps: int) -> None:
    """steps must be >= 1 and within the sampler's bound."""
    top = sampler.max_steps(config)
    if steps < 1 or (top is not None and steps > top):
        bound = f"1..{top}" if top is not None else ">= 1"
        raise UserError(
            f"{sampler.name} steps={steps} must be {'in ' if top else ''}{bound}: pick --steps "
            "in that range"
        )


def nfe(config: ml_collections.ConfigDict, name: str, steps: int, guidance: float) -> int:
    """Network evaluations one sample costs (classifier-free guidance doubles them)."""
    return get(name).nfe(config, steps) * (1 if guidance == 1.0 else 2)


def steps_for_nfe(config: ml_collections.ConfigDict, name: str, budget: int, guidance: float):
    """The step count whose cost is about budget evaluations per sample (guidance included)."""
    return get(name).steps_for(config, _at_least_one(budget // (1 if guidance == 1.0 else 2)))
