"""A tiny digits config shared by the training and CLI tests."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configs import digits_ddpm  # noqa: E402

# Overrides as train.py flags; tiny_config applies the same values in-process.
TINY_FLAGS = {
    "data.resolution": 8,
    "model.channels": 8,
    "model.channel_mult": (1, 2),
    "model.norm_groups": 4,
    "model.context_dim": 16,
    "model.num_heads": 2,
    "train.batch_size": 8,
    "train.steps": 4,
    "train.warmup_steps": 2,
    "train.checkpoint_every": 2,
    "train.log_every": 2,
    "sample.per_class": 1,
    "sample.steps": 2,
}


def tiny_config(data_dir: str, **overrides):
    c = digits_ddpm.get_config()
    c.data.data_dir = data_dir
    for key, value in {**TINY_FLAGS, **overrides}.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def tiny_flags(data_dir: str) -> list[str]:
    flags = [f"--config.data.data_dir={data_dir}"]
    for key, value in TINY_FLAGS.items():
        v = ",".join(map(str, value)) if isinstance(value, tuple) else value
        flags.append(f"--config.{key}={v}")
    return flags
