"""Samplers as registered values, each one algorithm written once (jldm.diffusion.solvers and
score_samplers) that runs on every objective with a noise process: the network is read as a
denoiser D in the EDM frame (jldm.build.frames), and a sampler is a pure function of (D or its
score, a sigma grid, key, known pixels).

A sampler knows its grid, its network evaluations (NFE) for a step count and the step count
for an NFE budget. Every grid starts at min(the model's sigma_max, sample.sigma_start): native
(uniform in the objective's own time variable: DDIM's timesteps, the SDE's t, NCSN's geometric
ladder, EDM's Karras grid, the flow's t), karras (heun) or log-SNR (dpmpp2m); on a discrete
model every grid sits on distinct timesteps of its own, or on diffusers' timesteps
(sample.timestep_spacing). Every grid ends on sigma = 0, where the step is D (Tweedie).
`steps`: ddim, euler, ddpm, heun, dpmpp2m: grid points; pc, em, ode: steps before the final D;
als: noise levels (steps_per_sigma Langevin steps each); langevin: steps at the frame's
smallest sigma; ode_adaptive: the most step attempts of its adaptive solver. Every setting is
read from the config when the sampler is built, never inside the traced function.
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from jldm.build import frames, solve_settings
from jldm.diffusion import frame as fr
from jldm.diffusion import score_samplers, solvers, spacing
from jldm.errors import UserError

# The most steps of a sampler on a continuous-time model (and of langevin and ode_adaptive,
# anywhere): published samplers take at most a few thousand, and one compiled call of more runs
# for hours without a word.
MAX_STEPS = 100_000

# sample(fn, key, known=None, z=None) -> samples of Plan.shape. fn(x, c): the (guided) network
# in the objective's own terms; known: (x0 [N,...], mask [N,...,1]) to keep (inpainting); z:
# the prior's unit-normal draw [N,...] (None: drawn from key).
SampleFn = Callable[..., jax.Array]
Solve = solve_settings.Solve


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a sampler is built from: the run's config, the samples' shape [N, ...], the step
    count, DDIM's eta, and clip: clip a discrete model's x0 estimates to [-1, 1]."""

    config: ml_collections.ConfigDict
    shape: tuple[int, ...]
    steps: int
    eta: float = 0.0
    clip: bool = True


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler: solver(config, eta, frame) -> solve(D, xbar, sigmas, key, known); grid: native,
    karras or log_snr; points(steps): the grid's sigmas above 0; nfe(config, steps):
    network evaluations per sample (unguided); steps_for(config, nfe) inverts it; default_steps
    (config); inpaints: takes known pixels."""

    name: str
    solver: Callable[[ml_collections.ConfigDict, float, fr.Frame], Solve]
    grid: str
    nfe: Callable[[ml_collections.ConfigDict, int], int]
    steps_for: Callable[[ml_collections.ConfigDict, int], int]
    points: Callable[[int], int] = lambda steps: steps
    default_steps: Callable[[ml_collections.ConfigDict], int] = lambda c: c.sample.steps
    inpaints: bool = True

    def sigmas(self, config, frame: fr.Frame, steps: int) -> np.ndarray:
        """The sigma grid [points + 1] of steps on frame, ending at 0 (or, on diffusers'
        timesteps without set_alpha_to_one, at the smallest level)."""
        s = config.sample
        n, first = self.points(steps), frames.start(config, frame)
        spaced = s.get("timestep_spacing", "")
        if spaced and frame.levels is not None:
            offset, one = int(s.get("steps_offset", 0)), bool(s.get("set_alpha_to_one", True))
            return spacing.spaced_sigmas(frame.levels, n, spaced, offset, one)
        if self.grid == "native":
            return fr.with_zero(fr.native_sigmas(frame, n, first))
        if self.grid == "karras":
            return fr.karras_sigmas(frame, n, first, float(config.sample.get("rho", 7.0)))
        return fr.log_snr_sigmas(frame, n, first)

    def max_steps(self, config) -> int:
        """The most steps: on a discrete model its timesteps below the start, else MAX_STEPS."""
        frame = frames.frame_of(config)
        if frame is None or frame.levels is None:
            return MAX_STEPS
        if config.sample.get("timestep_spacing", ""):
            most = len(frame.levels)  # diffusers' timesteps: any count up to T
        else:
            most = fr.max_steps(frame, frames.start(config, frame))
        return next(s for s in range(most, 0, -1) if self.points(s) <= most)

    def build(self, p: Plan) -> SampleFn:
        """sample(fn, key, known) for Plan p: from the frame's prior at the grid's start."""
        frame = frames.frame_of(p.config, p.clip)
        if frame is None:
            raise UserError(f"{self.name} needs a noise process: sample this objective by langevin")
        sigmas = self.sigmas(p.config, frame, p.steps)
        solve, first = self.solver(p.config, p.eta, frame), float(sigmas[0])

        # A grid that stops above 0 stops on a discrete (variance-preserving) model's level:
        # there x = xbar sqrt(alpha_bar) = xbar / sqrt(1 + sigma^2).
        out_scale = float(1.0 / np.sqrt(1.0 + np.float64(sigmas[-1]) ** 2))

        def sample(fn, key, known=None, z=None):
            k_init, k_run = jax.random.split(key)
            xbar = fr.prior(frame, k_init, p.shape, first, z)
            x = solve(frame.denoiser(fn), xbar, sigmas, k_run, known)
            return x if out_scale == 1.0 else x * out_scale

        return sample


def _one(n: int) -> int:
    return max(1, int(n))


def _corr(c) -> int:
    return 1 + int(c.sample.corrector_steps)


def _levels(c) -> int:
    """A discrete model's timesteps, else sample.steps: ddpm's default, every level."""
    return c.diffusion.timesteps if c.diffusion.objective == "ddpm" else c.sample.steps


REGISTRY: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", solve_settings.ancestral(lambda eta: eta), "native",
                nfe=lambda c, n: n, steps_for=lambda c, b: _one(b)),
        Sampler("euler", solve_settings.ancestral(lambda eta: 0.0), "native",
                nfe=lambda c, n: n, steps_for=lambda c, b: _one(b)),
        Sampler("ddpm", solve_settings.ancestral(lambda eta: 1.0), "native",
                nfe=lambda c, n: n, steps_for=lambda c, b: _one(b), default_steps=_levels),
        Sampler("heun", solve_settings.heun, "karras",
                nfe=lambda c, n: 2 * n - 1, steps_for=lambda c, b: _one((b + 1) // 2)),
        Sampler("dpmpp2m", lambda c, eta, frame: solvers.dpmpp_2m, "log_snr",
                nfe=lambda c, n: n, steps_for=lambda c, b: _one(b)),
        Sampler("pc", solve_settings.pc(True), "native", points=lambda n: n + 1,
                nfe=lambda c, n: n * _corr(c) + 1,
                steps_for=lambda c, b: _one((b - 1) // _corr(c))),
        Sampler("em", solve_settings.pc(False), "native", points=lambda n: n + 1,
                nfe=lambda c, n: n + 1, steps_for=lambda c, b: _one(b - 1)),
        Sampler("ode", solve_settings.ode, "native",
                points=lambda n: n + 1,
                nfe=lambda c, n: 4 * n + 1, steps_for=lambda c, b: _one((b - 1) // 4)),
        Sampler("als", solve_settings.als, "native",
                nfe=lambda c, n: n * c.sample.steps_per_sigma + 1,
                steps_for=lambda c, b: _one((b - 1) // c.sample.steps_per_sigma),
                default_steps=lambda c: c.diffusion.num_scales),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Langevin(Sampler):
    """Langevin dynamics at one noise level: the frame's smallest (dsm: its own sigma; esm, ism,
    sliced: 0), from N(0, sample.init_std^2), steps of sample.step_size."""

    def sigmas(self, config, frame, steps):
        return None

    def max_steps(self, config):
        return MAX_STEPS

    def build(self, p: Plan) -> SampleFn:
        s, f = p.config.sample, p.config.diffusion
        frame = frames.frame_of(p.config, p.clip)
        init_std, step = float(s.get("init_std", 1.0)), float(s.get("step_size", 1e-4))
        sigma = frame.sigma_min if frame else (f.sigma if f.objective == "dsm" else 0.0)

        def sample(fn, key, known=None, z=None):
            if frame is None:  # a score model of one level: fn(x, c [B])
                score = lambda x, c: fn(x, jax.numpy.full((x.shape[0],), c, x.dtype))
            else:
                score = fr.score_of(frame.denoiser(fn))
            k_init, k_run = jax.random.split(key)
            x0 = init_std * (jax.random.normal(k_init, p.shape) if z is None else z)
            return score_samplers.langevin(score, k_run, x0, step, p.steps, sigma)

        return sample


REGISTRY["langevin"] = Langevin(
    "langevin", None, "none", nfe=lambda c, n: n, steps_for=lambda c, b: _one(b), inpaints=False
)


@dataclasses.dataclass(frozen=True)
class Adaptive(Sampler):
    """The probability-flow ODE by adaptive Dormand-Prince 5(4) from the grid's start to the
    frame's smallest sigma (rtol = atol = sample.ode_tol), then D: steps bounds the step
    attempts, nfe the evaluations (each attempt 6, plus the first and D); the evaluations
    spent depend on the model. Samples that did not reach the end come out NaN."""

    def max_steps(self, config):
        return MAX_STEPS

    def build(self, p: Plan) -> SampleFn:
        frame = frames.frame_of(p.config, p.clip)
        if frame is None:
            raise UserError(f"{self.name} needs a noise process: sample this objective by langevin")
        hi, lo = frames.start(p.config, frame), frame.sigma_min
        tol = float(p.config.sample.get("ode_tol", 1e-4))

        def sample(fn, key, known=None, z=None):
            xbar = fr.prior(frame, jax.random.split(key)[0], p.shape, hi, z)
            score = fr.score_of(frame.denoiser(fn))
            return score_samplers.probability_flow_adaptive(score, xbar, hi, lo, tol, p.steps)[0]

        return sample


REGISTRY["ode_adaptive"] = Adaptive(
    "ode_adaptive", None, "none", nfe=lambda c, n: 6 * n + 2,
    steps_for=lambda c, b: _one((b - 2) // 6), default_steps=lambda c: 500, inpaints=False,
)  # fmt: skip


def get(name: str) -> Sampler:
    """The sampler called name."""
    if name not in REGISTRY:
        raise UserError(f"sampler {name!r} is not known: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def samplers_of(objective) -> tuple[str, ...]:
    """The samplers an objectives.Objective takes: every registered one, or langevin alone."""
    return ("langevin",) if objective.cannot else tuple(REGISTRY)


def check_sampler(objective, sampler: str, what: str = "sampler") -> None:
    """The sampler must be a known one the objective can take."""
    get(sampler)  # an unknown name first
    if sampler not in samplers_of(objective):
        raise UserError(
            f"{what} {sampler!r} does not apply to objective {objective.name!r}: it "
            f"{objective.cannot}; use langevin"
        )


def check_steps(
    sampler: Sampler, config: ml_collections.ConfigDict, steps: int, flag: str = "--steps"
) -> None:
    """steps must be an integer in 1..the sampler's bound."""
    top = sampler.max_steps(config)
    whole = isinstance(steps, int | np.integer) and not isinstance(steps, bool)
    if not whole:
        raise UserError(
            f"{sampler.name} steps={steps!r} is no whole number: pass {flag} as an int in 1..{top}"
        )
    if not 1 <= steps <= top:
        raise UserError(
            f"{sampler.name} steps={int(steps)} must be in 1..{top}: pick {flag} in that range"
        )


def _bounded(sampler: Sampler, config, steps: int) -> int:
    return min(steps, sampler.max_steps(config))


def nfe(config: ml_collections.ConfigDict, name: str, steps: int, guidance: float) -> int:
    """Network evaluations one sample costs (classifier-free guidance doubles them)."""
    return get(name).nfe(config, steps) * (1 if guidance == 1.0 else 2)


def _steps_bought(sampler: Sampler, config, budget: int, guidance: float) -> int:
    """The steps budget evaluations per sample pay for (guidance doubles each), unbounded."""
    return sampler.steps_for(config, _one(budget // (1 if guidance == 1.0 else 2)))


def check_nfe(
    config: ml_collections.ConfigDict, name: str, budget: int, guidance: float, flag: str = "--nfe"
) -> None:
    """A budget of evaluations per sample that name's steps can spend on config's run."""
    sampler = get(name)
    top = sampler.max_steps(config)
    if _steps_bought(sampler, config, budget, guidance) > top:
        raise UserError(
            f"{flag}={budget} is more than {name} can spend: at most "
            f"{nfe(config, name, top, guidance)} network evaluations ({top} steps); pass "
            f"{flag} at most that"
        )


def steps_for_nfe(config: ml_collections.ConfigDict, name: str, budget: int, guidance: float):
    """The step count whose cost is about budget evaluations per sample (guidance included)."""
    sampler = get(name)
    return _bounded(sampler, config, _steps_bought(sampler, config, budget, guidance))
