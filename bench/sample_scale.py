"""Sampling at scale: wall time and peak memory of sample.py writing K samples as uint8 shards,
for several K (memory should not grow with K), and the Frechet distance from shards against the
same figure from the samples in memory.

    python bench/sample_scale.py --nums 1000,4000,16000            # trains a digits run first
    python bench/sample_scale.py --workdir runs/digits --nums 50000 --steps 10

Without --workdir, a digits run (configs/digits_ddpm.py) is trained for --train_steps steps in a
temporary folder: the figures are about sampling, not about the model. Each K runs
`sample.py --num K --batch_size B --sampler S --steps N` in a fresh process; its peak resident
memory is that process's ru_maxrss (os.wait4). One JSON line per K (wall_s includes start,
jax import, restore and compile; sample_s is sample.py's own time over the shards), then one
line comparing the Frechet distance (the project's classifier features, test split) of the
smallest K's shards read one at a time with the figure of all its images in memory.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import timing

timing.add_root_to_path()

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "", "A trained digits run (default: train one briefly).")
flags.DEFINE_integer("train_steps", 50, "Steps of the run trained when --workdir is not given.")
flags.DEFINE_list("nums", ["1000", "4000", "16000"], "Sample counts K.")
flags.DEFINE_integer("batch_size", 500, "Images per shard (a multiple of the device count).")
flags.DEFINE_string("sampler", "ddim", "Sampler.")
flags.DEFINE_integer("steps", 10, "Sampler steps.")
flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance (1: one network call per step).")
flags.DEFINE_string("folder", "", "Where the shards go (default: a temporary folder).")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS


def _run_measured(args: list[str]) -> tuple[int, str, str, float, float]:
    """Run `python ARGS` in the repository root -> (exit code, stdout, stderr, wall s, peak MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=timing.ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), wall, usage.ru_maxrss / 1024


def _train(root: str) -> str:
    workdir = os.path.join(root, "run")
    code, _, err, wall, _ = _run_measured(
        [
            "train.py",
            "--config",
            "configs/digits_ddpm.py",
            "--workdir",
            workdir,
            f"--config.data.data_dir={os.path.join(root, 'tfds')}",
            f"--config.train.steps={FLAGS.train_steps}",
            f"--config.train.checkpoint_every={FLAGS.train_steps}",
        ]
    )
    if code:
        raise SystemExit(f"training the digits run failed: {err[-2000:]}")
    print(f"trained {workdir} for {FLAGS.train_steps} steps in {wall:.0f} s", flush=True)
    return workdir


def _frechet_check(workdir: str, folder: str) -> dict:
    """Frechet distance of a shard folder: features streamed shard by shard vs all in memory."""
    import numpy as np

    from jldm.api import load
    from jldm.data import dataset_of
    from jldm.eval import reference_for, score_samples
    from jldm.eval.frechet import frechet_distance
    from jldm.sampling.shards import shard_paths

    d = load(workdir).config.data
    reference = reference_for(dataset_of(d))
    n, total, outer, shards = 0, 0.0, 0.0, []
    for path in shard_paths(folder):
        with np.load(path) as z:
            images = z["images"].astype(np.float32) / 255.0
        feats = np.asarray(reference.classifier.features(images), np.float64)
        n, total, outer = n + len(feats), total + feats.sum(0), outer + feats.T @ feats
        shards.append(images)
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
    streamed = frechet_distance(mu, sigma, *reference.stats(*shards[0].shape[1:3]))
    whole = score_samples(reference, np.concatenate(shards))["frechet"]
    return {"case": "frechet_from_shards", "images": n, "streamed": streamed, "in_memory": whole}


def main(argv) -> None:
    del argv
    root = tempfile.mkdtemp(prefix="jldm-sample-scale-")
    # The digits classifier of the Frechet check is trained once and cached: not in the home.
    os.environ.setdefault("JLDM_CACHE_DIR", os.path.join(root, "cache"))
    workdir = FLAGS.workdir or _train(root)
    folder = FLAGS.folder or os.path.join(root, "shards")
    nums = [int(k) for k in FLAGS.nums]
    for k in nums:
        out = os.path.join(folder, f"k{k}")
        code, stdout, err, wall, peak = _run_measured(
            [
                "sample.py",
                "--workdir",
                workdir,
                "--num",
                str(k),
                "--batch_size",
                str(FLAGS.batch_size),
                "--sampler",
                FLAGS.sampler,
                "--steps",
                str(FLAGS.steps),
                "--guidance",
                str(FLAGS.guidance),
                "--out",
                out,
            ]
        )
        if code:
            raise SystemExit(f"sample.py --num {k} failed: {err[-2000:]}")
        m = re.search(r"written in ([0-9.]+) s", stdout)
        sample_s = float(m.group(1)) if m else None
        on_disk = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
        timing.emit(
            {
                "case": "sample_shards",
                "num": k,
                "batch_size": FLAGS.batch_size,
                "sampler": f"{FLAGS.sampler}-{FLAGS.steps}",
                "guidance": FLAGS.guidance,
                "wall_s": round(wall, 1),
                "sample_s": sample_s,
                "images_per_s": round(k / sample_s, 1) if sample_s else None,
                "peak_rss_mb": round(peak, 1),
                "shards_mb": round(on_disk / 1e6, 2),
            },
            FLAGS.out,
        )
    check = _frechet_check(workdir, os.path.join(folder, f"k{min(nums)}"))
    check["relative_difference"] = abs(check["streamed"] - check["in_memory"]) / check["in_memory"]
    timing.emit(check, FLAGS.out)
    print(json.dumps({"workdir": workdir, "shards": folder}))


if __name__ == "__main__":
    app.run(main)
