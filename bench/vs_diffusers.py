"""jldm against diffusers, interleaved in one process: A B A B ... per case, on the CPU or a GPU.

    python bench/vs_diffusers.py                        # every case, the digits config, CPU
    python bench/vs_diffusers.py --cases train,eval --repeats 20
    python bench/vs_diffusers.py --devices 1 --shard_sampling=false
    python bench/vs_diffusers.py --device cuda --config configs/sd15_shape.py --cases train,eval
    python bench/vs_diffusers.py --device cuda --batch 128 --ddim_num 500 --ddpm_num 500

Cases: train (the training loop's step: noising, forward, backward, clip, AdamW, EMA), eval
(one UNet evaluation), both at --batch; ddimN (DDIM with N steps drawing --ddim_num images) and
ddpm (all T ancestral steps, --ddpm_num images). On the CPU (--device cpu, the default) jldm
runs the way train.py runs it on a CPU host: one virtual device per core that divides the batch
(jldm.host.use_every_core, set before JAX starts), the batch split over the mesh; the samplers
split their images over the same devices unless --shard_sampling=false (then one program on one
device, as api.make_generator compiles it). Like train.py, the process keeps freed memory for
reuse instead of returning it to the system after each call (jldm.host.keep_freed_memory;
--keep_freed_memory=false to compare); the setting is process-wide, so the peer's allocations
get it too. With --device cuda both run on the GPU (JAX allocates as it goes rather than taking
most of the memory at start, so the two share it). The peer is diffusers' UNet2DConditionModel
in eager PyTorch (bench/peer_model.py; TF32 allowed on a GPU), with --threads threads on the
CPU: same config, same work per call, bf16 autocast where the config computes in bfloat16.
Both live in this process and take turns; each call blocks until done, so one side idles while
the other runs.

Per case: one JSON line (medians, quartiles, min/max of each side, images per second, `speedup`
= peer median / jldm median, so above 1 jldm is faster, the median of the per-round ratios,
torch's thread count, JAX's device count, the load average before and after; on a GPU each
side's peak allocated bytes, jldm's since the process started, the peer's during the case); at
the end a table of them. Defaults take about 4 minutes on two idle CPU cores.
"""

import os
import time

import timing

timing.add_root_to_path()

import jax  # noqa: E402
import jldm_cases as cases  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jldm.build.model import build_model  # noqa: E402
from jldm.host import CPU_DEVICES_ENV, keep_freed_memory, use_every_core  # noqa: E402
from jldm.train.sharding import check_batch, make_mesh  # noqa: E402

config_flags.DEFINE_config_file(
    "config", os.path.join(timing.ROOT, "configs", "digits_ddpm.py"), "A configs/*.py file."
)
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "Where both sides run.")
flags.DEFINE_list("cases", ["train", "eval", "ddim50", "ddpm"], "train, eval, ddimN, ddpm.")
flags.DEFINE_integer("batch", 0, "Batch of train and eval (0: the config's train.batch_size).")
flags.DEFINE_integer("ddim_num", 100, "Images per DDIM call.")
flags.DEFINE_integer("ddpm_num", 20, "Images per DDPM call.")
flags.DEFINE_integer("repeats", 0, "Timed rounds per case (0: train 10, eval 20, ddimN 3, ddpm 3).")
flags.DEFINE_integer(
    "warmup", -1, "Untimed rounds per case (-1: 2 for train and eval, 1 for ddimN, 0 for ddpm)."
)
flags.DEFINE_integer("threads", 0, "torch threads on the CPU (0: one per core of this process).")
flags.DEFINE_integer("devices", 0, "jldm's CPU devices (0: train.py's choice, one per core).")
flags.DEFINE_bool("shard_sampling", True, "Split the sampled images over jldm's devices.")
flags.DEFINE_bool(
    "keep_freed_memory", True, "malloc keeps freed memory for reuse (jldm.host), as train.py does."
)
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS

DEFAULT_REPEATS = {"train": (10, 2), "eval": (20, 2), "ddim": (3, 1), "ddpm": (3, 0)}


def _kind(case: str) -> str:
    """train, eval, ddpm, or ddim for ddimN."""
    if case in ("train", "eval", "ddpm"):
        return case
    if case.startswith("ddim") and case[4:].isdigit():
        return "ddim"
    raise app.UsageError(f"--cases has {case!r}: use train, eval, ddimN (e.g. ddim50) or ddpm")


def _jldm_call(case: str, config, model, mesh, batch: int, params) -> tuple[object, dict]:
    """A blocking call() of jldm's program for case, compiled here. -> (call, facts)."""
    kind = _kind(case)
    t0 = time.perf_counter()
    if kind == "train":
        prog = cases.train_program(config, model, mesh, batch, params=params)
        compiled = prog.step.lower(prog.state, prog.batches).compile()
        call, facts = cases.stepper(compiled, prog), {"batch": batch}
    elif kind == "eval":
        fn, args = cases.eval_program(config, model, mesh, batch, params=params)
        compiled = fn.lower(*args).compile()
        call, facts = (lambda: jax.block_until_ready(compiled(*args))), {"batch": batch}
    else:
        num = FLAGS.ddpm_num if kind == "ddpm" else FLAGS.ddim_num
        steps = int(case[4:]) if kind == "ddim" else config.sample.steps
        shard = FLAGS.shard_sampling and num % mesh.devices.size == 0
        fn, make_args = cases.sampler_program(config, model, num, kind, steps, mesh, shard, params)
        args = make_args(jax.random.PRNGKey(0))
        compiled = fn.lower(*args).compile()
        call = lambda: jax.block_until_ready(compiled(*args))
        facts = {"images": num, "sharded": shard}
    facts["jldm_compile_s"] = round(time.perf_counter() - t0, 2)
    return call, facts


def _peer_call(case: str, peer):
    kind = _kind(case)
    if kind == "train":
        return peer.train_call()
    if kind == "eval":
        return peer.eval_call()
    if kind == "ddpm":
        return peer.sample_call("ddpm", 0, FLAGS.ddpm_num)
    return peer.sample_call("ddim", int(case[4:]), FLAGS.ddim_num)


def _row(rec: dict) -> str:
    side = lambda s: f"{s['median_s']:.4f} ({s['q25_s']:.4f}-{s['q75_s']:.4f})"
    peer, ratio = "-", "-"
    if "peer" in rec:
        peer = side(rec["peer"])
        ratio = f"{rec['speedup']:.2f}x ({rec['round_ratio_q25']:.2f}-{rec['round_ratio_q75']:.2f})"
    load = f"{rec['load_before'][0]:.2f} -> {rec['load_after'][0]:.2f}"
    return f"| {rec['case']} | {side(rec['jldm'])} | {peer} | {ratio} | {load} |"


def _peer(config, batch: int, device: str, threads: int):
    """(Peer on device, with `threads` torch threads on the CPU, facts), or (None, facts)
    without torch."""
    try:
        import diffusers
        import torch
        from peer_model import Peer
    except ImportError as e:
        need = "pip install torch diffusers"
        print(f"vs_diffusers: timing jldm alone ({e.name} is not installed; {need})")
        return None, {}
    if device == "cpu":
        torch.set_num_threads(threads)
    facts = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    return Peer(config, batch, device, "eager"), facts


def _run_case(case: str, config, model, mesh, batch: int, params, peer, base: dict) -> dict:
    """Compile jldm's program, warm the peer, time them in turns; -> the case's record."""
    repeats, warmup = DEFAULT_REPEATS[_kind(case)]
    repeats = FLAGS.repeats or repeats
    warmup = warmup if FLAGS.warmup < 0 else FLAGS.warmup
    load_before = timing.load_average()
    gpu = FLAGS.device == "cuda" and peer is not None
    if gpu:
        peer.torch.cuda.reset_peak_memory_stats()
    calls = {}
    calls["jldm"], facts = _jldm_call(case, config, model, mesh, batch, params)
    if peer is not None:
        calls["peer"] = _peer_call(case, peer)
        t0 = time.perf_counter()
        calls["peer"]()  # its first call: allocations, oneDNN/cuDNN algorithm choices
        facts["peer_first_call_s"] = round(time.perf_counter() - t0, 2)
    timed = timing.interleaved(calls, repeats, warmup)
    rec = dict(base, case=case, **facts, warmup=warmup)
    images = facts.get("batch") or facts["images"]
    for side, t in timed.items():
        rec[side] = {
            k: [round(x, 5) for x in v] if k == "times_s" else round(v, 5) for k, v in t.items()
        }
        rec[side]["images_per_s"] = round(images / t["median_s"], 2)
    if (peak := cases.peak_bytes()) is not None:
        rec["jldm"]["peak_bytes_since_start"] = peak
    if gpu:
        rec["peer"]["peak_bytes"] = int(peer.torch.cuda.max_memory_allocated())
    if peer is not None:
        rec["speedup"] = round(timed["peer"]["median_s"] / timed["jldm"]["median_s"], 3)
        pairs = zip(timed["jldm"]["times_s"], timed["peer"]["times_s"], strict=True)
        ratios = timing.spread([p / j for j, p in pairs])
        for k in ("median", "q25", "q75"):
            rec[f"round_ratio_{k}"] = round(ratios[f"{k}_s"], 3)
    rec["load_before"], rec["load_after"] = load_before, timing.load_average()
    return rec


def _start_backend(batch: int) -> bool:
    """Set up JAX's backend for --device before anything starts it. -> whether malloc keeps
    freed memory (jldm.host.keep_freed_memory; CPU only)."""
    if FLAGS.device == "cuda":
        jax.config.update("jax_platforms", "cuda")
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the peer needs memory too
        return False
    jax.config.update("jax_platforms", "cpu")
    if FLAGS.devices:
        os.environ[CPU_DEVICES_ENV] = str(FLAGS.devices)
    use_every_core(batch)
    # As train.py on a CPU; the process-wide setting serves torch's allocations too.
    return FLAGS.keep_freed_memory and keep_freed_memory()


def main(_):
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    batch = FLAGS.batch or config.train.batch_size
    for case in FLAGS.cases:
        _kind(case)
    allocator = _start_backend(batch)
    cores = len(os.sched_getaffinity(0))
    mesh = make_mesh()
    check_batch(batch, mesh)
    model = build_model(config)
    params = cases.random_params(config, model, mesh)  # one init for every case
    peer, peer_facts = _peer(config, batch, FLAGS.device, FLAGS.threads or cores)
    base = {
        "bench": "vs_diffusers",
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "device": FLAGS.device,
        "cores": cores,
        "jax": jax.__version__,
        "jax_devices": jax.device_count(),
        "keep_freed_memory": allocator,
        **peer_facts,
        "dtype": config.model.dtype,
    }
    rows = []
    for case in FLAGS.cases:
        rows.append(_run_case(case, config, model, mesh, batch, params, peer, base))
        timing.emit(rows[-1], FLAGS.out)
        jax.clear_caches()
    torch_part = ""
    if peer is not None:
        torch_part = f"torch {base['torch']}" + (
            f" with {base['torch_threads']} threads, " if FLAGS.device == "cpu" else ", "
        )
    where = jax.devices()[0].device_kind if FLAGS.device == "cuda" else "CPU"
    print(
        f"\njax {base['jax']} on {base['jax_devices']} {where} devices, {torch_part}{cores} cores, "
        f"{config.model.dtype}; seconds per call, median (quartiles); speedup = diffusers / jldm "
        "(quartiles of the per-round ratios); 1-minute load average before -> after"
    )
    print("| case | jldm | diffusers eager | speedup | load |\n| --- | --- | --- | --- | --- |")
    for rec in rows:
        print(_row(rec))


if __name__ == "__main__":
    app.run(main)
