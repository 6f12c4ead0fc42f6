"""jldm against diffusers on this CPU, interleaved in one process: A B A B ... per case.

    python bench/cpu_peer.py                            # every case, the digits config
    python bench/cpu_peer.py --cases train,eval --repeats 20
    python bench/cpu_peer.py --devices 1 --shard_sampling=false

Cases: train (the training loop's step: noising, forward, backward, clip, AdamW, EMA), eval
(one UNet evaluation), both at --batch; ddimN (DDIM with N steps drawing --ddim_num images) and
ddpm (all T ancestral steps, --ddpm_num images). jldm runs the way train.py runs it on a CPU
host: one virtual device per core that divides the batch (jldm.host.use_every_core, set before
JAX starts), the batch split over the mesh; the samplers split their images over the same
devices unless --shard_sampling=false (then one program on one device, as api.make_generator
compiles it). Like train.py, the process keeps freed memory for reuse instead of returning it
to the system after each call (jldm.host.keep_freed_memory; --keep_freed_memory=false to
compare); the setting is process-wide, so the peer's allocations get it too. The peer is
diffusers' UNet2DConditionModel in eager PyTorch with --threads threads (bench/peer_model.py):
same config, same work per call. Both live in this process and take turns; each call blocks
until done, so one side's threads idle while the other's run.

Per case: one JSON line (medians, quartiles, min/max of each side, `speedup` = peer median /
jldm median, so above 1 jldm is faster, the median of the per-round ratios, torch's thread
count, JAX's device count, the load average before and after); at the end a table of them.
Defaults take about 4 minutes on two idle cores.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # read when jax is imported

import time  # noqa: E402

import timing  # noqa: E402

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
flags.DEFINE_list("cases", ["train", "eval", "ddim50", "ddpm"], "train, eval, ddimN, ddpm.")
flags.DEFINE_integer("batch", 0, "Batch of train and eval (0: the config's train.batch_size).")
flags.DEFINE_integer("ddim_num", 100, "Images per DDIM call.")
flags.DEFINE_integer("ddpm_num", 20, "Images per DDPM call.")
flags.DEFINE_integer("repeats", 0, "Timed rounds per case (0: train 10, eval 20, ddimN 3, ddpm 3).")
flags.DEFINE_integer(
    "warmup", -1, "Untimed rounds per case (-1: 2 for train and eval, 1 for ddimN, 0 for ddpm)."
)
flags.DEFINE_integer("threads", 0, "torch threads (0: one per core of this process).")
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


def _peer(config, batch: int, threads: int):
    """(Peer on the CPU with `threads` torch threads, facts), or (None, facts) without torch."""
    try:
        import diffusers
        import torch
        from peer_model import Peer
    except ImportError as e:
        print(
            f"cpu_peer: timing jldm alone ({e.name} is not installed; pip install torch diffusers)"
        )
        return None, {}
    torch.set_num_threads(threads)
    facts = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    return Peer(config, batch, "cpu", "eager"), facts


def _run_case(case: str, config, model, mesh, batch: int, params, peer, base: dict) -> dict:
    """Compile jldm's program, warm the peer, time them in turns; -> the case's record."""
    repeats, warmup = DEFAULT_REPEATS[_kind(case)]
    repeats = FLAGS.repeats or repeats
    warmup = warmup if FLAGS.warmup < 0 else FLAGS.warmup
    load_before = timing.load_average()
    calls = {}
    calls["jldm"], facts = _jldm_call(case, config, model, mesh, batch, params)
    if peer is not None:
        calls["peer"] = _peer_call(case, peer)
        t0 = time.perf_counter()
        calls["peer"]()  # its first call: allocations, oneDNN primitive caches
        facts["peer_first_call_s"] = round(time.perf_counter() - t0, 2)
    timed = timing.interleaved(calls, repeats, warmup)
    rec = dict(base, case=case, **facts, warmup=warmup)
    for side, t in timed.items():
        rec[side] = {
            k: [round(x, 5) for x in v] if k == "times_s" else round(v, 5) for k, v in t.items()
        }
    if peer is not None:
        rec["speedup"] = round(timed["peer"]["median_s"] / timed["jldm"]["median_s"], 3)
        pairs = zip(timed["jldm"]["times_s"], timed["peer"]["times_s"], strict=True)
        ratios = timing.spread([p / j for j, p in pairs])
        for k in ("median", "q25", "q75"):
            rec[f"round_ratio_{k}"] = round(ratios[f"{k}_s"], 3)
    rec["load_before"], rec["load_after"] = load_before, timing.load_average()
    return rec


def main(_):
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    batch = FLAGS.batch or config.train.batch_size
    for case in FLAGS.cases:
        _kind(case)
    if FLAGS.devices:
        os.environ[CPU_DEVICES_ENV] = str(FLAGS.devices)
    use_every_core(batch)  # before anything starts JAX's backend
    # As train.py on a CPU; the process-wide setting serves torch's allocations too.
    allocator = FLAGS.keep_freed_memory and keep_freed_memory()
    cores = len(os.sched_getaffinity(0))
    mesh = make_mesh()
    check_batch(batch, mesh)
    model = build_model(config)
    params = cases.random_params(config, model, mesh)  # one init for every case
    peer, peer_facts = _peer(config, batch, FLAGS.threads or cores)
    base = {
        "bench": "cpu_peer",
        "config": config_flags.get_config_filename(FLAGS["config"]),
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
    torch_part = f"torch {base['torch']} with {base['torch_threads']} threads, " if peer else ""
    print(
        f"\njax {base['jax']} on {base['jax_devices']} CPU devices, {torch_part}{cores} cores, "
        f"{config.model.dtype}; seconds per call, median (quartiles); speedup = diffusers / jldm "
        "(quartiles of the per-round ratios); 1-minute load average before -> after"
    )
    print("| case | jldm | diffusers eager | speedup | load |\n| --- | --- | --- | --- | --- |")
    for rec in rows:
        print(_row(rec))


if __name__ == "__main__":
    app.run(main)
