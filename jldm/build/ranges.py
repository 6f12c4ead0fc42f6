"""Every numeric config value against its allowed range, checked before any work is done.

One table for all configs: a key a config does not have is skipped, and NaN is refused in any
float value, listed or not. A count fits int32 (JAX's integers, the step counter's type) and a
real float32 (the parameters' type): a value that would overflow to inf or vanish to 0 there
is refused. Checks that depend on several values or on the objective (divisible resolutions,
sigma_min < sigma_max, known names) stay with the code that reads them.
"""

import math
from typing import NamedTuple

import ml_collections
import numpy as np

from jldm.errors import UserError

INT32_MAX = 2**31 - 1
# A sampling seed becomes a JAX key of two uint32 words; the high one is 0 unless jax_enable_x64
# is set, so seeds beyond uint32 (or below 0) would give the key of another seed.
SEED_MAX = 2**32 - 1
# Classifier-free guidance scales: 1 is the conditional model alone, 0 the unconditional; the
# literature's are 1..20, and a larger scale only amplifies the difference of two estimates.
GUIDANCE_MAX = 100.0
_F32_MAX = float(np.finfo(np.float32).max)


def float32_problem(value: float) -> str | None:
    """Why a finite real has no float32 counterpart (inf or 0 there), else None."""
    if abs(value) > _F32_MAX:
        return f"beyond float32's largest value {_F32_MAX:.4g}"
    if value != 0 and np.float32(value) == 0:
        return "so small that it is 0 in float32"
    return None


class Range(NamedTuple):
    """An integer (integer=True) or a finite real in [low, high] (open ends where *_open)."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, bool):
            return False
        if self.integer:
            if not isinstance(value, int):
                return False
        elif not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.integer and self.low is not None and self.high == INT32_MAX:
            return f"{what} >= {self.low:g} (an int32: at most {INT32_MAX})"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            fmt = (lambda v: str(int(v))) if self.integer else (lambda v: f"{v:g}")
            return f"{what} in {left}{fmt(self.low)}, {fmt(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return what


def count(low: int = 1, high: int = INT32_MAX) -> Range:
    return Range(True, low, high)


def positive() -> Range:
    return Range(False, 0, low_open=True)


def nonnegative() -> Range:
    return Range(False, 0)


def fraction(high_open: bool = False) -> Range:
    return Range(False, 0, 1, high_open=high_open)


def unit_open() -> Range:
    return Range(False, 0, 1, low_open=True, high_open=True)


# The schedule of a training stage: config.train, and config.stage1 of latent diffusion.
SCHEDULE = {
    "steps": count(0),
    "batch_size": count(1),
    "lr": positive(),
    "warmup_steps": count(0),
    "weight_decay": nonnegative(),
    "grad_clip": positive(),
    "ema_decay": fraction(high_open=True),
    "steps_per_call": count(1),
    "checkpoint_every": count(1),
    "keep_checkpoints": count(1),
    "log_every": count(1),
    "max_skipped_fraction": fraction(),
}

RANGES = {
    "seed": count(0),
    **{f"data.{k}": count(1) for k in ("resolution", "channels", "num_classes", "n_modes")},
    "data.radius": nonnegative(),
    "data.threads": count(1),
    "data.std": positive(),
    **{
        f"model.{k}": count(1)
        for k in (
            "channels",
            "num_res_blocks",
            "num_heads",
            "transformer_depth",
            "norm_groups",
            "context_dim",
            "context_tokens",
            "low_res_factor",
            "features",
            "depth",
            "embed_dim",
            "latent_size",
            "hidden",
        )
    },
    "model.dropout": fraction(high_open=True),
    "model.obs_logvar": Range(False),
    **{f"text.{k}": count(1) for k in ("max_length", "width", "layers", "heads")},
    "diffusion.timesteps": count(1),
    "diffusion.beta_start": unit_open(),
    "diffusion.beta_end": unit_open(),
    "diffusion.cond_drop": fraction(high_open=True),
    "diffusion.sigma": positive(),
    "diffusion.sigma_min": positive(),
    "diffusion.sigma_max": positive(),
    "diffusion.num_scales": count(1),
    "diffusion.beta_min": positive(),
    "diffusion.beta_max": positive(),
    "diffusion.eps_t": unit_open(),
    "diffusion.sigma_data": positive(),
    "diffusion.p_mean": Range(False),
    "diffusion.p_std": positive(),
    "diffusion.logit_mean": Range(False),
    "diffusion.logit_std": positive(),
    "diffusion.min_snr_gamma": positive(),
    "diffusion.n_projections": count(1),
    "sample.steps": count(1),
    "sample.num": count(1),
    "sample.per_class": count(1),
    "sample.snr": positive(),
    "sample.corrector_steps": count(0),
    "sample.steps_per_sigma": count(1),
    "sample.als_step": positive(),
    "sample.step_size": positive(),
    "sample.init_std": positive(),
    "sample.eps": unit_open(),
    "sample.guidance": Range(False, 0, GUIDANCE_MAX),
    "sample.eta": fraction(),
    "sample.sigma_start": positive(),
    "sample.rho": positive(),
    "sample.s_churn": nonnegative(),
    "sample.s_tmin": nonnegative(),
    "sample.s_noise": positive(),
    "sample.temperature": positive(),
    "sample.interpolation_rows": count(1),
    "sample.interpolation_steps": count(2),
    "eval.num": count(1),
    "eval.levels": count(1),
    **{f"vae.{k}": count(1) for k in ("num_samples", "iwae_samples")},
    **{f"vae.{k}": count(0) for k in ("kl_warmup_steps", "eval_images")},
    **{f"stage1.{k}": r for k, r in SCHEDULE.items()},
    **{
        f"stage1.{k}": count(1)
        for k in (
            "channels",
            "latent_channels",
            "num_res_blocks",
            "norm_groups",
            "disc_channels",
            "disc_layers",
        )
    },
    **{f"stage1.{k}": count(0) for k in ("disc_start", "perceptual_steps")},
    **{f"stage1.{k}": nonnegative() for k in ("disc_weight", "kl_weight", "perceptual_weight")},
    **{f"train.{k}": r for k, r in SCHEDULE.items()},
    "train.sample_every": count(0),
    "train.sample_quality": count(0),
}
# Tuples whose every entry is a count.
TUPLES = {
    "model.channel_mult": count(1),
    "model.attention_levels": count(0),
    "stage1.channel_mult": count(1),
}
# Tuples with an entry per network level: at least one.
NON_EMPTY = ("model.channel_mult", "stage1.channel_mult")


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _refuse(key: str, value, allowed: str) -> None:
    raise UserError(f"{key}={value!r} is out of range: it must be {allowed}; fix --config.{key}")


def _nan_in(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, tuple | list) and any(_nan_in(v) for v in value)


def _reals(value) -> list[float]:
    if isinstance(value, float):
        return [value]
    return [v for v in value if isinstance(v, float)] if isinstance(value, tuple | list) else []


def check_values(values: dict, rules: dict, prefix: str = "") -> None:
    """Refuse the first value of values (name -> value) outside rules (name -> Range), NaN, or
    a finite real float32 cannot hold."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        rule = rules.get(name)
        if rule is not None and not rule.holds(value):
            _refuse(key, value, rule.describe())
        if _nan_in(value):
            _refuse(key, value, "a number, not NaN")
        for v in _reals(value):
            if math.isfinite(v) and (why := float32_problem(v)):
                raise UserError(f"{key}={v!r} is {why}: fix --config.{key}")


def check_seed(seed, what: str = "seed") -> int:
    """seed as an int, refused unless an integer in [0, SEED_MAX] (one key per seed)."""
    whole = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
    if not whole or not 0 <= seed <= SEED_MAX:
        raise UserError(f"{what}={seed!r} must be an integer in [0, {SEED_MAX}]")
    return int(seed)


def check_guidance(guidance, what: str = "guidance") -> float:
    """A classifier-free guidance scale as a float, refused outside [0, GUIDANCE_MAX] or NaN."""
    rule = RANGES["sample.guidance"]
    if not rule.holds(guidance):
        raise UserError(
            f"{what}={guidance!r} must be {rule.describe()} (1: the conditional model alone, "
            "0: unconditional)"
        )
    return float(guidance)


def check_section(section: ml_collections.ConfigDict, name: str) -> None:
    """A training stage's schedule (config.train or config.stage1), named name in messages."""
    check_values(_flat(section), SCHEDULE, f"{name}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every value of config against RANGES and TUPLES, and no NaN anywhere."""
    values = _flat(config)
    check_values(values, RANGES)
    for key in NON_EMPTY:
        if key in values and len(values[key]) == 0:
            _refuse(key, values[key], "a non-empty tuple (one width multiplier per level)")
    for key, rule in TUPLES.items():
        for item in values.get(key, ()):
            if not rule.holds(item):
                _refuse(key, values[key], f"a tuple of {rule.describe()}s")
