"""The digits recipe study: sample quality against training steps for each recipe.

    python bench/recipes.py --recipes demo,native8 --out docs/recipes/digits
    python bench/recipes.py --recipes demo,native8 --time --out docs/recipes/digits

Each recipe is a config file and overrides (RECIPES). The study trains it with train.py into
WORKDIR/NAME, keeping a checkpoint at each of its evaluation steps, then draws 50 samples of each
class from every kept checkpoint with each of the recipe's (sampler, steps, guidance) settings and
scores them in the project's classifier space against the test split: class accuracy, Frechet,
FD_inf (the Frechet distance extrapolated to infinitely many samples, jldm.eval.frechet_inf),
kernel distance, precision and recall. One JSON line per (recipe, step, setting) goes to
OUT.jsonl, beside one row for 500 real training images at each resolution the recipes use.

Quality depends on steps, not on the machine, so the study may run on a busy machine. --time
measures what a step and a sampling call cost: each recipe's train step timed on its own, the
recipes interleaved (A B A B) with --rounds rounds, written to OUT_time.jsonl; run it on an idle
machine. bench/recipes_report.py joins the two into minutes and the Pareto table and plot.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from quality_score import real_score, score
from timing import ROOT, add_root_to_path

add_root_to_path()

PER_CLASS = 50
# (sampler, steps, guidance) scored at every evaluation step of a recipe.
SETTINGS = [
    ("dpmpp2m", 10, 2.0),
    ("dpmpp2m", 20, 1.0),
    ("dpmpp2m", 20, 1.5),
    ("dpmpp2m", 20, 2.0),
    ("dpmpp2m", 20, 3.0),
]
NATIVE = {"data.resolution": 8, "model.channel_mult": (1, 2), "model.norm_groups": 8}
RECIPES = {
    # The demo as shipped: 16x16 from 8x8 data, 16 channels at (1, 2, 4), batch 64, lr 2e-3.
    "demo": ("digits_ddpm", {}, [500, 1000, 1500]),
    "demo_long": ("digits_ddpm", {"train.ema_decay": 0.999}, [1500, 3000, 4500]),
    "wide16": ("digits_ddpm", {"model.channels": 32}, [500, 1000, 1500]),
    "native8": ("digits_ddpm", {**NATIVE, "model.channels": 32}, [1000, 2000, 3000, 4500]),
    "native8_w64": ("digits_ddpm", {**NATIVE, "model.channels": 64}, [1500, 3000]),
    "native8_edm": ("digits_edm", {**NATIVE, "model.channels": 32}, [1500, 3000]),
    "native8_flow": ("digits_flow", {**NATIVE, "model.channels": 32}, [1500, 3000]),
    "native8_b128": (
        "digits_ddpm",
        {**NATIVE, "model.channels": 32, "train.batch_size": 128},
        [1500, 3000],
    ),
    "native8_ema999": (
        "digits_ddpm",
        {**NATIVE, "model.channels": 32, "train.ema_decay": 0.999},
        [1500, 3000],
    ),
    "native8_deep": (
        "digits_ddpm",
        {**NATIVE, "model.channels": 32, "model.num_res_blocks": 2},
        [1500, 3000],
    ),
    # Fashion-MNIST at 16x16 in under 30 minutes (the shipped fashion_cpu.py).
    "fashion_cpu": ("fashion_cpu", {}, [1500, 3000, 4500]),
}


def _flag(key: str, value) -> str:
    if isinstance(value, tuple):
        value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"--config.{key}={value}"


def train_command(name: str, workdir: str, steps: int | None = None, every: int | None = None):
    """train.py's command line for recipe `name` (steps/every: override its steps/checkpoints)."""
    config, overrides, evals = RECIPES[name]
    every = every or np.gcd.reduce(evals)
    flags = {
        **overrides,
        "train.steps": steps or max(evals),
        "train.checkpoint_every": int(every),
        "train.keep_checkpoints": 100,
        "train.log_every": 50,
    }
    args = [sys.executable, os.path.join(ROOT, "train.py")]
    args += [f"--config={ROOT}/configs/{config}.py", f"--workdir={workdir}"]
    return args + [_flag(k, v) for k, v in flags.items()]


def recipe_data(name: str):
    """config.data of recipe `name`, its overrides applied."""
    import importlib

    config, overrides, _ = RECIPES[name]
    data = importlib.import_module(f"jldm.configs.{config}").get_config().data
    for key, value in overrides.items():
        if key.startswith("data."):
            data[key[5:]] = value
    return data


def real_rows(names, seed: int = 0) -> list[dict]:
    """500 random training images (50 per class) of each dataset the recipes use, scored at
    each resolution they train at, like the samples."""
    rows = {}
    for name in names:
        data = recipe_data(name)
        key = (data.name, data.resolution)
        if key not in rows:
            figures = real_score(data, PER_CLASS, seed)
            rows[key] = {"recipe": "real", "data": data.name, "resolution": data.resolution}
            rows[key].update(figures)
    return list(rows.values())


def evaluate(name: str, workdir: str, on_row) -> None:
    """Score every kept checkpoint of recipe `name` with each of SETTINGS."""
    import jax

    from jldm import api
    from jldm.data.datasets import dataset_of
    from jldm.eval.quality import reference_for

    labels = np.repeat(np.arange(10, dtype=np.int32), PER_CLASS)
    for step in RECIPES[name][2]:
        run = api.load(workdir, step)
        reference = reference_for(dataset_of(run.config.data))
        for sampler, steps, guidance in SETTINGS:
            gen = api.make_generator(run, labels, sampler=sampler, steps=steps, guidance=guidance)
            key = jax.random.PRNGKey(0)
            t0 = time.perf_counter()
            compiled = gen.fn.lower(*gen.args(key)).compile()
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            images = np.asarray(jax.block_until_ready(compiled(*gen.args(key))))
            sample_s = time.perf_counter() - t0
            row = {"recipe": name, "step": step, "sampler": sampler, "steps": steps}
            row.update(guidance=guidance, data=run.config.data.name)
            row.update(resolution=run.config.data.resolution)
            row.update(compile_s=compile_s, sample_s=sample_s, **score(reference, images, labels))
            on_row(row)


def time_steps(names, workdir: str, rounds: int, steps: int) -> list[dict]:
    """Each recipe trained `steps` steps from nothing, the recipes interleaved over `rounds`
    rounds (A B A B): s_per_step is the median steps/s its log reports (compile excluded),
    start_s what the whole command took beyond steps * s_per_step (start-up, data, compile)."""
    from jldm.compare import train_speed

    per = {n: [] for n in names}
    for r in range(rounds):
        for n in names:
            w = os.path.join(workdir, f"time_{n}_{r}")
            t0 = time.perf_counter()
            subprocess.run(train_command(n, w, steps, steps), check=True, capture_output=True)
            wall = time.perf_counter() - t0
            s_per_step = 1.0 / train_speed(w)
            per[n].append((s_per_step, wall - steps * s_per_step))
    return [
        {
            "recipe": n,
            "s_per_step": float(np.median([a for a, _ in v])),
            "start_s": float(np.median([b for _, b in v])),
            "rounds": v,
        }
        for n, v in per.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "recipes"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "recipes", "digits"))
    p.add_argument("--time", action="store_true", help="time the train steps (idle machine)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--time_steps", type=int, default=300)
    args = p.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        sys.exit(f"error: unknown recipes {unknown}: pick from {sorted(RECIPES)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.time:
        rows = time_steps(names, args.workdir, args.rounds, args.time_steps)
        with open(args.out + "_time.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "load": os.getloadavg()[0]}) + "\n")
                print(json.dumps(row), flush=True)
        return
    out = open(args.out + ".jsonl", "a")  # noqa: SIM115

    def on_row(row):
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(json.dumps(row), flush=True)

    for name in names:
        workdir = os.path.join(args.workdir, name)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(train_command(name, workdir), check=True)
        wall = time.perf_counter() - t0
        on_row(
            {
                "recipe": name,
                "train_wall_s": wall,
                "load_before": load,
                "load_after": os.getloadavg()[0],
            }
        )
        evaluate(name, workdir, on_row)
    for row in real_rows(names):
        on_row(row)


if __name__ == "__main__":
    main()
