"""The cases of bench/gpu.py: which bench script runs with which flags, and the figures read
from its JSON lines (with the issue's targets). No jax or torch here.

Full mode runs the configs at their own sizes on one GPU; --tiny shrinks every config so the
same commands run on a CPU in seconds (the test of bench/gpu.py).
"""

import argparse
import operator
from typing import NamedTuple

SD15, DIGITS, CIFAR = (f"configs/{n}.py" for n in ("sd15_shape", "digits_ddpm", "cifar10_ddpm"))
OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}

# --tiny: every config shrunk to 8x8 inputs, one UNet level of 8 channels (attention in the
# mid block only), float32 (XLA:CPU compiles it faster than bfloat16), 10 timesteps; batch 2.
TINY = (
    "data.resolution=8 model.channels=8 model.channel_mult=(1,) model.num_res_blocks=1 "
    "model.attention_levels=() model.norm_groups=4 model.num_heads=2 model.context_dim=16 "
    "model.context_tokens=2 model.dtype=float32 diffusion.timesteps=10"
)

# Per case, its figures: (name, the record's "case", dotted key in it, unit, target or None).
# A target is (op, value); bench/README.md says which settings each figure was measured with.
FIGURES = {
    "digits_ddpm1000": [
        ("digits_ddpm1000_500_s", "sample_ddpm", "median_s", "s", ("<=", 1.4)),
        ("digits_ddpm1000_images_per_s", "sample_ddpm", "images_per_s", "images/s", None),
    ],
    "sd15_jldm": [
        ("sd15_train_images_per_s", "train", "images_per_s", "images/s", (">=", 165.0)),
        ("sd15_eval_images_per_s", "eval", "images_per_s", "images/s", (">=", 600.0)),
        ("sd15_train_peak_gb", "train", "peak_bytes", "GB", ("<", 38.0)),
    ],
    "sd15_eval_vs_diffusers": [
        ("sd15_vs_eval_jldm_images_per_s", "eval", "jldm.images_per_s", "images/s", None),
        ("sd15_vs_eval_peer_images_per_s", "eval", "peer.images_per_s", "images/s", None),
        ("sd15_vs_eval_speedup", "eval", "speedup", "x", None),
    ],
    "cifar10_train": [
        ("cifar10_train_images_per_s", "train", "images_per_s", "images/s", None),
        ("cifar10_train_peak_gb", "train", "peak_bytes", "GB", None),
    ],
    "sd15_train_remat": [
        ("sd15_train_remat_images_per_s", "train", "images_per_s", "images/s", None),
        ("sd15_train_remat_peak_gb", "train", "peak_bytes", "GB", None),
    ],
    "sd15_train_vs_diffusers": [
        ("sd15_vs_train_jldm_images_per_s", "train", "jldm.images_per_s", "images/s", None),
        ("sd15_vs_train_peer_images_per_s", "train", "peer.images_per_s", "images/s", None),
        ("sd15_vs_train_speedup", "train", "speedup", "x", None),
    ],
}


class Case(NamedTuple):
    """A bench script and its flags, run in a process of its own for at most limit_s."""

    name: str
    script: str
    args: list[str]
    limit_s: float
    env: dict | None = None


def _config(config: str, tiny: bool, **extra: str) -> list[str]:
    """--config and its overrides (the tiny shapes with --tiny, then extra) as flags."""
    overrides = dict(kv.split("=") for kv in TINY.split()) if tiny else {}
    overrides.update(extra)
    return [f"--config={config}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def cases(a: argparse.Namespace) -> list[Case]:
    """The cases in the order they run: the targeted figures first."""
    t, lim = a.tiny, a.timeout_s
    few = ["--repeats", "2", "--warmup", "0"] if t else []
    peak = ["--peak_tflops", str(a.peak_tflops)] if a.peak_tflops else []
    sd = [*_config(SD15, t), "--batch", "2" if t else "32"]
    remat = [*_config(SD15, t, **{"model.remat": "True"}), "--batch", "2" if t else "32"]
    cifar = [*_config(CIFAR, t), "--batch", "2" if t else "128"]
    digits = [*_config(DIGITS, t), "--num", "4" if t else "500", "--cases", "ddpm"]
    digits += ["--repeats", "1", "--warmup", "0"] if t else ["--repeats", "3", "--warmup", "1"]
    vs = [*sd, "--device", "cpu" if t else "cuda", *few]
    # JAX and the peer share the GPU: JAX may grow to this fraction, the peer has the rest.
    shared = {"XLA_PYTHON_CLIENT_MEM_FRACTION": str(a.jax_share)}
    return [
        Case("digits_ddpm1000", "sampling.py", digits, lim * 0.5),
        # eval first: a train step that runs out of memory then loses only its own figures,
        # and the process's peak, read after train, is the train step's (eval's is far lower).
        Case("sd15_jldm", "unet.py", [*sd, "--cases", "eval,train", *few, *peak], lim * 1.5),
        Case("sd15_eval_vs_diffusers", "vs_diffusers.py", [*vs, "--cases", "eval"], lim, shared),
        Case("cifar10_train", "unet.py", [*cifar, "--cases", "train", *few, *peak], lim),
        Case("sd15_train_remat", "unet.py", [*remat, "--cases", "train", *few, *peak], lim * 1.5),
        Case("sd15_train_vs_diffusers", "vs_diffusers.py", [*vs, "--cases", "train"], lim, shared),
    ]
