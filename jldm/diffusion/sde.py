"""Forward SDEs of Song et al. (2021): VE, VP and sub-VP, with their reverse SDE and ODE drifts.

Each SDE is dx = f(t) x dt + g(t) dw on t in [0, T], linear in x, so the marginal given x(0) is
Gaussian: x(t) | x(0) ~ N(alpha(t) x(0), std(t)^2 I). The classes are frozen dataclasses of
Python floats: hashable, so pass one to a jitted function by closure or as a static argument.
Times t are [B] arrays (or scalars); a score_fn(x [B,...], t [B]) -> [B,...] is grad_x log p_t.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class SDE:
    """Shared methods; a subclass defines drift_coef, diffusion, mean_coef_std and prior_std."""

    T: float = 1.0

    def drift_coef(self, t: jax.Array) -> jax.Array:
        """f(t) in the drift f(t) x. t: [B] -> [B]."""
        raise NotImplementedError

    def diffusion(self, t: jax.Array) -> jax.Array:
        """g(t). t: [B] -> [B]."""
        raise NotImplementedError

    def mean_coef_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha(t), std(t)) of x(t) | x(0) ~ N(alpha x(0), std^2 I). t: [B] -> ([B], [B])."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that stands in for p_T."""
        raise NotImplementedError

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """f(x, t) = f(t) x. x: [B,...], t: [B] -> [B,...]."""
        return _bcast(self.drift_coef(t), x) * x

    def marginal(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and std of p(x(t) | x(0)). x0: [B,...], t: [B] -> ([B,...], [B,1,...])."""
        alpha, std = self.mean_coef_std(t)
        return _bcast(alpha, x0) * x0, _bcast(std, x0)

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draw x(T) from the prior N(0, prior_std^2 I). -> shape."""
        return self.prior_std * jax.random.normal(key, shape)

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """log N(z; 0, prior_std^2 I), summed over all but the batch axis. z: [B,...] -> [B]."""
        dim = math.prod(z.shape[1:])
        var = self.prior_std**2
        sq = jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)
        return -0.5 * dim * math.log(2 * math.pi * var) - 0.5 * sq / var

    def reverse_drift(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
        """Drift f - g^2 s of the reverse-time SDE (run with dt < 0). -> [B,...]."""
        g2 = _bcast(jnp.square(self.diffusion(t)), x)
        return self.drift(x, t) - g2 * score_fn(x, t)

    def ode_drift(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
        """Drift f - g^2 s / 2 of the probability-flow ODE, which shares the marginals p_t."""
        g2 = _bcast(jnp.square(self.diffusion(t)), x)
        return self.drift(x, t) - 0.5 * g2 * score_fn(x, t)

    def denoise(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
        """Tweedie's posterior mean E[x(0) | x(t)] = (x + std^2 s(x, t)) / alpha. -> [B,...]."""
        alpha, std = self.mean_coef_std(t)
        return (x + _bcast(jnp.square(std), x) * score_fn(x, t)) / _bcast(alpha, x)

    def edm_sigma(self, t: jax.Array) -> jax.Array:
        """sigma = std / alpha, the noise level of x / alpha (Karras et al. 2022). t: [B] -> [B]."""
        alpha, std = self.mean_coef_std(t)
        return std / alpha

    def edm_time(self, sigma: jax.Array) -> jax.Array:
        """The time t whose edm_sigma(t) is sigma (the inverse). sigma: [B] -> [B]."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: dx = sigma(t) sqrt(2 log(smax/smin)) dw, sigma(t) = smin (smax/smin)^t.

    std(t)^2 = sigma(t)^2 - sigma_min^2 is the exact variance the SDE adds from t = 0. Song et
    al.'s code uses sigma(t) instead, i.e. treats x(0) as already carrying sigma_min of noise; the
    two differ by less than sigma_min.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: jax.Array) -> jax.Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t. t: [B] -> [B]."""
        return self.sigma_min * jnp.exp(t * self._log_ratio)

    def drift_coef(self, t: jax.Array) -> jax.Array:
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def diffusion(self, t: jax.Array) -> jax.Array:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def mean_coef_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = jnp.asarray(t, jnp.float32)
        std = self.sigma_min * jnp.sqrt(jnp.expm1(2 * t * self._log_ratio))
        return jnp.ones_like(t), std

    def edm_time(self, sigma: jax.Array) -> jax.Array:
        return jnp.log1p(jnp.square(sigma / self.sigma_min)) / (2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw, beta linear in t."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def beta(self, t: jax.Array) -> jax.Array:
        """beta(t) = beta_min + t (beta_max - beta_min). t: [B] -> [B]."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t: jax.Array) -> jax.Array:
        """log alpha(t) = -int_0^t beta / 2. t: [B] -> [B]."""
        t = jnp.asarray(t, jnp.float32)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t: jax.Array) -> jax.Array:
        return -0.5 * self.beta(t)

    def diffusion(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(self.beta(t))

    def mean_coef_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        lm = self.log_mean_coef(t)
        return jnp.exp(lm), jnp.sqrt(-jnp.expm1(2 * lm))

    def neg_log_mean_coef_at(self, sigma: jax.Array) -> jax.Array:
        """-log alpha where std / alpha = sigma: 0.5 log(1 + sigma^2). sigma: [B] -> [B]."""
        return 0.5 * jnp.log1p(jnp.square(sigma))

    def edm_time(self, sigma: jax.Array) -> jax.Array:
        # Solves t^2 (beta_max - beta_min) / 4 + t beta_min / 2 = m in the form stable for
        # beta_max = beta_min.
        m = self.neg_log_mean_coef_at(jnp.asarray(sigma, jnp.float32))
        b, d = self.beta_min, self.beta_max - self.beta_min
        return 4 * m / (b + jnp.sqrt(b**2 + 4 * d * m))

    @property
    def prior_std(self) -> float:
        return 1.0


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP: the VP drift with g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta)); std = 1 - alpha^2."""

    def diffusion(self, t: jax.Array) -> jax.Array:
        # 1 - exp(-2 int beta) = 1 - alpha^4
        return jnp.sqrt(self.beta(t) * -jnp.expm1(4 * self.log_mean_coef(t)))

    def mean_coef_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        lm = self.log_mean_coef(t)
        return jnp.exp(lm), -jnp.expm1(2 * lm)

    def neg_log_mean_coef_at(self, sigma: jax.Array) -> jax.Array:
        """-log alpha where std / alpha = 1 / alpha - alpha = sigma: asinh(sigma / 2)."""
        return jnp.arcsinh(0.5 * sigma)
