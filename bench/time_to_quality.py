"""Time to quality: a jldm config against diffusers' UNet2DModel, trained for the same wall clock.

    python bench/time_to_quality.py                 # digits_ddpm's 1500 steps, then the peer
    python bench/time_to_quality.py --config configs/digits_demo.py --peer_attention 1 \
        --every 300 --sample_steps 20 --guidance 1.25   # make demo's recipe (bench/README.md)
    python bench/time_to_quality.py --minutes 8     # both for 8 minutes
    python bench/time_to_quality.py --tiny          # 20 jldm steps, 50 images: end to end

Each round trains jldm, then the peer, back to back on the same cores; each run is a fresh
process and its clock starts at a time.time() stamp taken just before the process starts, so
start-up (imports, data, compilation) counts. jldm runs train.py on the config (default
configs/digits_ddpm.py, the demo's previous recipe) with a checkpoint every --every steps; a
checkpoint's time is the TensorBoard wall time of the log record of its step, written just
before it is saved. With
--minutes 0 jldm trains the config's train.steps and the time of its last checkpoint is the
budget; with --minutes M it trains until M minutes, when it gets SIGTERM and saves a last
checkpoint (timed at the signal). The peer (bench/peer_unet2d.py: same data as jldm renders it,
same betas, objective, class dropout, optimizer, clip, EMA, batch, on --threads torch threads,
eager) trains for the same budget and saves its EMA at the first step past each of jldm's
checkpoint times and at the budget.

Then every saved EMA of both is sampled (--per_class images of each class, DPM-Solver++ 2M in
--sample_steps steps at --guidance: jldm's dpmpp2m, and diffusers' DPMSolverMultistepScheduler
on the timesteps of jldm's grid) and scored by bench/quality_score.py. One JSON line per
(round, system, mark) goes to stdout and OUT; then per round and figure the target (the worse
of the two systems' best values, or --target) and the minutes each system needs to reach it
(linear between the marks around the first mark that meets it), with their ratio
peer / jldm (above 1: jldm gets there sooner).
"""

import argparse
import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import timing
from timing import ROOT, emit, load_average

timing.add_root_to_path()

import peer_unet2d  # noqa: E402
from quality_score import real_score, score  # noqa: E402

LOWER_IS_BETTER = {"frechet", "fd_inf", "kid"}
SUMMARY_KEYS = ("fd_inf", "kid", "class_accuracy")


def peer_files(config, workdir: str, args) -> tuple[dict, str]:
    """SPEC.json and DATA.npz of the peer (see bench/peer_unet2d.py) for config."""
    from jldm.build import frames
    from jldm.build import samplers as registry
    from jldm.data import load_split, preprocess
    from jldm.data.datasets import dataset_of
    from jldm.diffusion import frame as fr
    from jldm.diffusion import schedules

    d, m, t, f = config.data, config.model, config.train, config.diffusion
    if f.objective != "ddpm" or f.prediction != "eps":
        sys.exit("error: the peer trains DDPM eps-prediction: use a ddpm config")
    betas = {
        "linear": lambda: schedules.linear_betas(f.timesteps, f.beta_start, f.beta_end),
        "scaled_linear": lambda: schedules.scaled_linear_betas(
            f.timesteps, f.beta_start, f.beta_end
        ),
        "cosine": lambda: schedules.cosine_betas(f.timesteps),
    }[f.schedule]()
    frame = frames.frame_of(config)
    sigmas = registry.get("dpmpp2m").sigmas(config, frame, args.sample_steps)
    timesteps = [int(i) for i in fr.level_index(frame.levels, sigmas[:-1])]
    spec = dict(
        resolution=d.resolution,
        image_channels=d.channels,
        num_classes=d.num_classes,
        channels=m.channels,
        channel_mult=list(m.channel_mult),
        num_res_blocks=m.num_res_blocks,
        norm_groups=m.norm_groups,
        num_heads=m.num_heads,
        attention_levels=[int(a) for a in args.peer_attention.split(",") if a],
        batch_size=t.batch_size,
        lr=t.lr,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        ema_decay=t.ema_decay,
        cond_drop=f.cond_drop,
        seed=config.seed,
        threads=args.threads,
        betas=betas.tolist(),
        timesteps=timesteps,
    )
    train = load_split(dataset_of(d), "train")
    images = np.ascontiguousarray(preprocess(train.images, d.resolution).transpose(0, 3, 1, 2))
    data = os.path.join(workdir, "peer_data.npz")
    np.savez(data, images=images, labels=train.labels, betas=betas)
    return spec, data


def tb_times(tb_dir: str) -> dict[int, float]:
    """{step: earliest wall time of its scalars} from the TensorBoard event files of tb_dir."""
    from tensorboardX.proto.event_pb2 import Event

    times = {}
    for path in glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")):
        with open(path, "rb") as fh:
            raw = fh.read()
        pos = 0
        while pos + 12 <= len(raw):  # TFRecord: u64 length, u32 crc, data, u32 crc
            (n,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = Event.FromString(raw[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("summary"):
                times[event.step] = min(times.get(event.step, np.inf), event.wall_time)
    return times


def run_jldm(config_path: str, workdir: str, steps: int, every: int, budget_s: float | None):
    """train.py in workdir -> [{"step", "seconds"}] of its checkpoints, seconds after start."""
    log_every = 50 if every % 50 == 0 else every
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={config_path}"]
    cmd += [f"--workdir={workdir}", f"--config.train.steps={steps}"]
    cmd += [f"--config.train.checkpoint_every={every}", "--config.train.keep_checkpoints=100000"]
    cmd += [f"--config.train.log_every={log_every}"]
    os.makedirs(workdir)
    signalled = None
    with open(os.path.join(workdir, "train.log"), "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            signalled = time.time() - t0
            proc.send_signal(signal.SIGTERM)  # train.py saves a checkpoint and stops
            proc.wait()
    ckpt = os.path.join(workdir, "checkpoints")
    saved = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []
    if signalled is not None and not saved:
        sys.exit(f"error: jldm saved no checkpoint in {budget_s:.0f} s: raise --minutes")
    if (proc.returncode and signalled is None) or not saved:
        sys.exit(f"error: train.py failed (exit {proc.returncode}): see {workdir}/train.log")
    logged = tb_times(os.path.join(workdir, "tb"))
    return [{"step": s, "seconds": logged[s] - t0 if s in logged else signalled} for s in saved]


def run_peer(spec: dict, data: str, workdir: str, budget_s: float, marks: list[float]):
    """bench/peer_unet2d.py for budget_s seconds -> its marks.jsonl records."""
    os.makedirs(workdir)
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    cmd = [sys.executable, os.path.join(ROOT, "bench", "peer_unet2d.py"), f"--spec={spec_path}"]
    cmd += [f"--data={data}", f"--out={workdir}", f"--budget_s={budget_s}"]
    cmd += ["--marks=" + ",".join(f"{m:.3f}" for m in marks)]
    with open(os.path.join(workdir, "train.log"), "w") as log:
        t0 = time.time()
        rc = subprocess.call([*cmd, f"--t0={t0}"], stdout=log, stderr=subprocess.STDOUT)
    if rc:
        sys.exit(f"error: the peer failed (exit {rc}): see {workdir}/train.log")
    with open(os.path.join(workdir, "marks.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def score_jldm(workdir: str, marks: list[dict], labels, args, reference) -> tuple[list, int]:
    """Each checkpoint's EMA sampled and scored -> (figures per mark, parameter count)."""
    import jax

    from jldm import api

    key, compiled, rows, count = jax.random.PRNGKey(0), None, [], 0
    for m in marks:
        run = api.load(workdir, m["step"])
        gen = api.make_generator(
            run, labels, sampler="dpmpp2m", steps=args.sample_steps, guidance=args.guidance
        )
        if compiled is None:  # one program for every checkpoint: only the params change
            compiled = gen.fn.lower(*gen.args(key)).compile()
            count = sum(x.size for x in jax.tree_util.tree_leaves(run.params))
        t = time.perf_counter()
        images = np.asarray(jax.block_until_ready(compiled(*gen.args(key))))
        rows.append({"sample_s": time.perf_counter() - t, **score(reference, images, labels)})
    return rows, count


def score_peer(workdir: str, spec: dict, marks: list[dict], labels, args, reference) -> list:
    """Each saved EMA of the peer sampled and scored -> figures per mark."""
    rows = []
    for m in marks:
        net = peer_unet2d.load(spec, os.path.join(workdir, f"mark_{m['mark']}.pt"))
        t = time.perf_counter()
        images = peer_unet2d.sample(net, spec, labels, args.guidance)
        rows.append({"sample_s": time.perf_counter() - t, **score(reference, images, labels)})
    return rows


def crossing(points: list[tuple[float, float]], target: float, lower: bool) -> float | None:
    """The first time a figure [(seconds, value)] meets target, linear between the marks."""
    meets = (lambda v: v <= target) if lower else (lambda v: v >= target)
    for i, (s, v) in enumerate(points):
        if meets(v):
            if i == 0:
                return s
            s0, v0 = points[i - 1]
            return s0 + (target - v0) / (v - v0) * (s - s0)
    return None


def summarise(rows: list[dict], targets: dict) -> list[dict]:
    """Per figure: the target, each system's minutes to it and the ratio peer / jldm."""
    out = []
    for key in SUMMARY_KEYS:
        lower = key in LOWER_IS_BETTER
        curves = {
            sys_: sorted((r["minutes"], r[key]) for r in rows if r["system"] == sys_)
            for sys_ in ("jldm", "peer")
        }
        bests = {s: (min if lower else max)(v for _, v in c) for s, c in curves.items()}
        target = targets.get(key, (max if lower else min)(bests.values()))
        rec = {"figure": key, "target": target, **{f"best_{s}": b for s, b in bests.items()}}
        for s, c in curves.items():
            rec[f"{s}_minutes"] = crossing(c, target, lower)
        j, p = rec["jldm_minutes"], rec["peer_minutes"]
        rec["ratio_peer_over_jldm"] = p / j if j and p is not None else None
        out.append(rec)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits_ddpm.py"))
    p.add_argument("--minutes", type=float, default=0.0, help="0: jldm's train.steps' time")
    p.add_argument("--every", type=int, default=100, help="jldm's checkpoint cadence (steps)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per_class", type=int, default=50)
    p.add_argument("--sample_steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2, help="the peer's torch threads")
    p.add_argument("--peer_attention", default="2", help="levels with self-attention blocks")
    p.add_argument("--target", default="", help="e.g. fd_inf=5,kid=0.01 (default: the worse best)")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "time_to_quality"))
    p.add_argument("--out", default="", help="append the JSON lines here too")
    p.add_argument("--tiny", action="store_true", help="20 jldm steps, 5 images a class, 1 round")
    args = p.parse_args()
    if args.tiny:
        args.minutes, args.every, args.rounds, args.per_class = 0.0, 10, 1, 5
    config = timing.load_config_file(args.config)
    steps = 20 if args.tiny else config.train.steps if args.minutes <= 0 else 10**8
    budget = args.minutes * 60 if args.minutes > 0 else None
    targets = {k: float(v) for k, v in (kv.split("=") for kv in args.target.split(",") if kv)}
    root = os.path.join(args.workdir, time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(root)
    spec, data = peer_files(config, root, args)
    from jldm.data.datasets import dataset_of
    from jldm.eval.quality import reference_for

    reference = reference_for(dataset_of(config.data))
    out = args.out or os.path.join(root, "results.jsonl")
    labels = np.repeat(np.arange(config.data.num_classes, dtype=np.int32), args.per_class)
    real = real_score(config.data, args.per_class)
    emit({"kind": "real", "images": len(labels), **real}, out)
    for r in range(args.rounds):
        base = os.path.join(root, f"round{r}")
        load = {"load_jldm": load_average()}
        jl = run_jldm(os.path.abspath(args.config), f"{base}/jldm", steps, args.every, budget)
        load["load_peer"] = load_average()
        budget_s = budget or jl[-1]["seconds"]
        marks = [m["seconds"] for m in jl[:-1]]
        pe = run_peer(spec, data, f"{base}/peer", budget_s, marks)
        load["load_end"] = load_average()
        jrows, jcount = score_jldm(f"{base}/jldm", jl, labels, args, reference)
        prows = score_peer(f"{base}/peer", spec, pe, labels, args, reference)
        rows = []
        for sys_, marks_, figs in (("jldm", jl, jrows), ("peer", pe, prows)):
            for i, (m, f) in enumerate(zip(marks_, figs, strict=True)):
                row = {"kind": "mark", "round": r, "system": sys_, "mark": i, "step": m["step"]}
                row.update(minutes=m["seconds"] / 60, images=len(labels), **f)
                rows.append(row)
                emit(row, out)
        setup = {"kind": "setup", "round": r, "budget_minutes": budget_s / 60, **load}
        setup.update(jldm_params=jcount, peer_params=peer_unet2d.param_count(spec))
        setup.update(jldm_steps=jl[-1]["step"], peer_steps=pe[-1]["step"])
        setup.update(peer_first_step_minutes=pe[0]["first_step_s"] / 60, cpus=os.cpu_count())
        emit(setup, out)
        for rec in summarise(rows, targets):
            emit({"kind": "summary", "round": r, **rec}, out)


if __name__ == "__main__":
    main()
