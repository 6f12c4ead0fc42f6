"""Sample a trained run: python sample.py --workdir runs/x --out runs/x/samples.

Writes OUT.png (one row per class) and OUT.npz (images [N,H,W,C] in [0,1], labels [N]) and,
for the digits and Fashion-MNIST, prints the project's quality figures.
"""

import os
import time

from absl import flags

from jldm.cli import run_main

flags.DEFINE_string("workdir", None, "Run folder written by train.py.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("num", None, "Samples per class (default: config.sample.per_class).")
flags.DEFINE_list("classes", None, "Class labels to sample, e.g. 0,3,7 (default: all).")
flags.DEFINE_enum(
    "sampler",
    None,
    ["ddpm", "ddim", "als", "pc", "em", "ode"],
    "Sampler (default: config.sample.sampler): ddpm|ddim for DDPM runs, als (annealed Langevin) "
    "for NCSN runs, pc|em|ode for SDE runs.",
)
flags.DEFINE_integer("steps", None, "DDIM/PC/EM/ODE steps (default: config.sample.steps).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale; 1 = conditional only.")
flags.DEFINE_float("eta", None, "DDIM eta (0 = deterministic).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string(
    "out", None, "Output prefix: writes OUT.png and OUT.npz (default WORKDIR/samples)."
)
flags.DEFINE_bool("metrics", True, "Print class accuracy and Frechet distance where defined.")
FLAGS = flags.FLAGS

_QUALITY_DATASETS = ("digits", "fashion_mnist")


def _labels(num_classes: int, classes: list[str] | None, per_class: int):
    import numpy as np

    from jldm.errors import UserError

    try:
        chosen = list(range(num_classes)) if not classes else [int(c) for c in classes]
    except ValueError:
        raise UserError(f"--classes={','.join(classes)} must be integers") from None
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--classes has {bad}: classes are 0..{num_classes - 1}")
    if per_class < 1:
        raise UserError(f"--num={per_class} must be >= 1")
    return np.repeat(np.asarray(chosen, np.int32), per_class)


def _writable_prefix(out: str) -> str:
    from jldm.errors import UserError

    out = os.path.abspath(os.path.expanduser(out))
    folder = os.path.dirname(out)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create output folder {folder} ({e.strerror}): pick --out"
        ) from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable: pick another --out")
    return out


def main() -> None:
    import numpy as np

    import jldm
    from jldm.data import to_unit
    from jldm.errors import UserError
    from jldm.eval import save_grid

    if FLAGS.workdir is None:
        raise UserError("sample.py needs --workdir DIR (a folder written by train.py)")
    workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    run = jldm.load(workdir, FLAGS.step)
    out = _writable_prefix(FLAGS.out or os.path.join(workdir, "samples"))
    s, d = run.config.sample, run.config.data
    per_class = FLAGS.num or s.per_class
    labels = _labels(d.num_classes, FLAGS.classes, per_class)
    sampler = FLAGS.sampler or s.sampler
    steps = FLAGS.steps or s.steps
    guidance = s.guidance if FLAGS.guidance is None else FLAGS.guidance
    eta = s.eta if FLAGS.eta is None else FLAGS.eta

    t0 = time.perf_counter()
    x = jldm.generate(run, labels, sampler, steps, guidance, FLAGS.seed, eta)
    seconds = time.perf_counter() - t0
    images = to_unit(x)
    save_grid(images, out + ".png", ncols=per_class)
    np.savez(out + ".npz", images=images, labels=labels)
    nfe = jldm.api.sampler_nfe(run.config, sampler, steps, guidance)
    print(
        f"step {run.step}: {len(labels)} samples, {sampler} ({nfe} NFE), "
        f"guidance {guidance}, {seconds:.1f} s incl. compile"
    )
    if FLAGS.metrics and d.name in _QUALITY_DATASETS:
        from jldm.eval import sample_quality

        q = sample_quality(images, labels, d.name, d.data_dir, d.fashion_dir)
        print("quality: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items()))
    print(f"samples: {out}.png {out}.npz")


if __name__ == "__main__":
    run_main(main)
