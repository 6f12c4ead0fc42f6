"""The peer: the same cases as bench/unet.py and bench/sampling.py with diffusers on PyTorch.

    python bench/peer_diffusers.py --config configs/sd15_shape.py --batch 32   # on a GPU
    python bench/peer_diffusers.py --config configs/digits_ddpm.py --batch 64 --cases eval,train
    python bench/peer_diffusers.py --config configs/digits_ddpm.py --cases ddim50,ddpm --num 500

The model and its calls are bench/peer_model.py's: diffusers' UNet2DConditionModel built from
the same config keys as jldm's UNet, randomly initialised (for configs/sd15_shape.py Stable
Diffusion 1.5's UNet, for configs/digits_ddpm.py the digits UNet). Modes: eager and
torch.compile. torch and diffusers are imported only when run; without them it prints one line.
bench/vs_diffusers.py runs these calls interleaved with jldm's in one process.
"""

import time

import timing

timing.add_root_to_path()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from peer_model import Peer  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_integer("batch", 0, "Batch for eval/train (0: the config's train.batch_size).")
flags.DEFINE_list("cases", ["eval", "train"], "eval, train, ddimN (N DDIM steps), ddpm.")
flags.DEFINE_list("modes", ["eager", "compile"], "eager and/or compile (torch.compile).")
flags.DEFINE_integer("num", 500, "Images per sampling call.")
flags.DEFINE_integer("repeats", 10, "Timed calls per case (the median is reported).")
flags.DEFINE_integer(
    "warmup", 2, "Untimed calls before timing (torch.compile compiles in the first)."
)
flags.DEFINE_string("device", "", "cuda or cpu (default: cuda when available).")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS


def main(_):
    try:
        import diffusers
        import torch
    except ImportError as e:
        print(f"peer_diffusers: skipped ({e.name} is not installed; pip install torch diffusers)")
        return
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/digits_ddpm.py")
    device = FLAGS.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = FLAGS.batch or config.train.batch_size
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu:{torch.get_num_threads()}threads"
    for mode in FLAGS.modes:
        peer = Peer(config, batch, device, mode)
        base = {
            "bench": "diffusers",
            "config": config_flags.get_config_filename(FLAGS["config"]),
            "device": f"{device}:{name}",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "mode": mode,
            "dtype": "bf16-autocast" if peer.bf16 else "float32",
            "params": sum(p.numel() for p in peer.module.parameters()),
        }
        for case in FLAGS.cases:
            if case in ("eval", "train"):
                call = peer.eval_call() if case == "eval" else peer.train_call()
                images = batch
                rec = dict(base, case=case, batch=batch)
            elif case == "ddpm" or (case.startswith("ddim") and case[4:].isdigit()):
                sampler, steps = ("ddpm", 0) if case == "ddpm" else ("ddim", int(case[4:]))
                call = peer.sample_call(sampler, steps, FLAGS.num)
                images = FLAGS.num
                rec = dict(base, case=f"sample_{case}", images=FLAGS.num)
            else:
                raise app.UsageError(f"--cases has {case!r}: use eval, train, ddimN or ddpm")
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            call()  # the first call compiles under torch.compile
            rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            timed = timing.measure(call, FLAGS.repeats, max(FLAGS.warmup - 1, 0))
            rec.update({k: round(v, 6) if isinstance(v, float) else v for k, v in timed.items()})
            rec["images_per_s"] = round(images / timed["median_s"], 3)
            if case == "train":
                rec["steps_per_s"] = round(1 / timed["median_s"], 3)
            if device.startswith("cuda"):
                rec["peak_bytes"] = int(torch.cuda.max_memory_allocated())
            timing.emit(rec, FLAGS.out)
        del peer
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    app.run(main)
