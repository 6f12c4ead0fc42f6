"""Each registered sampler's solve(D, xbar, sigmas, key, known) from the run's settings: the
adapters between a sampler's config keys (sample.*) and the algorithms of
jldm.diffusion.solvers and score_samplers, read once when a sampler is built."""

from collections.abc import Callable

from jldm.diffusion import frame as fr
from jldm.diffusion import score_samplers, solvers

# solve(D, xbar, sigmas [N+1], key, known) -> x at sigmas[-1]
Solve = Callable[..., object]


def score(solve: Callable) -> Callable:
    """A score sampler solve(score, ...) as a solve(D, ...)."""
    return lambda d, *args: solve(fr.score_of(d), *args)


def ancestral(eta_of: Callable[[float], float]):
    """ddim (eta_of: the given eta), euler (0) and ddpm (1) as solvers.ancestral."""
    return lambda c, eta, frame: (
        lambda d, x, s, k, known: solvers.ancestral(d, x, s, k, known, eta_of(eta))
    )


def heun(config, eta, frame) -> Solve:
    """solvers.heun with the churn of sample.s_churn, s_tmin, s_tmax and s_noise."""
    s = config.sample
    churn = dict(
        churn=float(s.get("s_churn", 0.0)),
        t_min=float(s.get("s_tmin", 0.0)),
        t_max=float(s.get("s_tmax", float("inf"))),
        noise=float(s.get("s_noise", 1.0)),
    )
    snap = lambda sigma: fr.snap(frame, sigma)
    return lambda d, x, sig, k, known: solvers.heun(d, x, sig, k, known, to_level=snap, **churn)


def pc(corrector: bool):
    """The reverse SDE's predictor with sample.corrector_steps Langevin corrector steps at
    sample.snr (pc), or none (em)."""

    def solver(config, eta, frame) -> Solve:
        s = config.sample
        snr, n = float(s.snr), int(s.corrector_steps) if corrector else 0
        return score(lambda *a: score_samplers.predictor_corrector(*a, snr=snr, n_corrector=n))

    return solver


def als(config, eta, frame) -> Solve:
    """Annealed Langevin: sample.steps_per_sigma steps of sample.als_step sigma^2 per level."""
    s = config.sample
    per, eps = int(s.steps_per_sigma), float(s.als_step)

    def solve(d, x, sigmas, key, known):
        grad = fr.score_of(d)
        return score_samplers.annealed_langevin(grad, key, x, sigmas[:-1], per, eps, known)

    return solve


def ode(config, eta, frame) -> Solve:
    """The probability-flow ODE by RK4 in log sigma."""
    return score(score_samplers.probability_flow_rk4)
