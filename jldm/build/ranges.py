"""Every numeric config value against its allowed range, checked before any work is done.

One table for all configs: a key a config does not have is skipped, and NaN is refused in any
float value, listed or not. Checks that depend on several values or on the objective (divisible
resolutions, sigma_min < sigma_max, known names) stay with the code that reads them.
"""

import math
from typing import NamedTuple

import ml_collections

from jldm.errors import UserError


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
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return what


def count(low: int = 1) -> Range:
    return Range(True, low)


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
    "sample.guidance": Range(False),
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


def check_values(values: dict, rules: dict, prefix: str = "") -> None:
    """Refuse the first value of values (name -> value) outside rules (name -> Range)."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        rule = rules.get(name)
        if rule is not None and not rule.holds(value):
            _refuse(key, value, rule.describe())
        if _nan_in(value):
            _refuse(key, value, "a number, not NaN")


def check_section(section: ml_collections.ConfigDict, name: str) -> None:
    """A training stage's schedule (config.train or config.stage1), named name in messages."""
    check_values(_flat(section), SCHEDULE, f"{name}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every value of config against RANGES and TUPLES, and no NaN anywhere."""
    values = _flat(config)
    check_values(values, RANGES)
    for key, rule in TUPLES.items():
        for item in values.get(key, ()):
            if not rule.holds(item):
                _refuse(key, values[key], f"a tuple of {rule.describe()}s")
