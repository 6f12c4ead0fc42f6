"""A tiny digits config shared by the training and CLI tests, and config overrides by path."""

import os
import sys
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict
from ml_collections.config_flags import config_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configs import digits_ddpm  # noqa: E402

# Overrides as train.py flags; tiny_config applies the same values in-process.
TINY_FLAGS = {
    "data.resolution": 8,
    "model.channels": 8,
    "model.channel_mult": (1,),  # one level: the loop, objective and CLI tests need no more
    "model.norm_groups": 4,
    "model.context_dim": 16,
    "model.num_heads": 2,
    "train.batch_size": 8,
    "train.steps": 4,
    "train.warmup_steps": 2,
    "train.checkpoint_every": 2,
    "train.log_every": 2,
    "sample.per_class": 1,
    # No final grid: a compile most tests never look at (test_cli's trained run draws it).
    "train.final_samples": False,
    "sample.steps": 2,
}


def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
    """Set config's "section.key" paths (any depth, e.g. "stage1.channels") in place.

    The setter of train.py's --config.PATH=VALUE flags, so a path the config lacks is a KeyError
    and a value of another type a TypeError, as on the command line. Returns config.
    """
    for path, value in overrides.items():
        config_path.set_value(path, config, value)
    return config


def as_flags(overrides: Mapping[str, Any]) -> list[str]:
    """The same overrides as train.py flags: --config.PATH=VALUE, tuples written 1,2."""
    return [
        f"--config.{path}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for path, v in overrides.items()
    ]


def tiny_config(data_dir: str, **overrides) -> ConfigDict:
    """The tiny digits config reading data_dir, with TINY_FLAGS then overrides applied."""
    c = digits_ddpm.get_config()
    c.data.data_dir = data_dir
    return apply_overrides(c, {**TINY_FLAGS, **overrides})


def tiny_flags(data_dir: str) -> list[str]:
    """tiny_config(data_dir) as train.py flags on configs/digits_ddpm.py."""
    return as_flags({"data.data_dir": data_dir, **TINY_FLAGS})
