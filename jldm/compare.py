"""Compare trained runs at one sampling budget: python -m jldm.compare W1 W2 ... --nfe 200.

Every workdir is sampled with its own configured sampler, its step count set so that one image
costs about --nfe network evaluations (guidance included), the same images per class and seed.
Prints a Markdown table and writes it with one JSON object per run (OUT.md, OUT.jsonl):
objective, sampler, NFE, compile and sampling seconds, images/s, the training speed read from
the run's metrics (median steps/s, and for a latent run its stage 1's too), class accuracy and
Frechet distance in the project's classifier space (a text-conditional run is prompted with each
class's first caption), and bits/dim of the test split where the objective defines it.

A VAE run (configs/*_vae.py) gets a row of the same columns: its sampler is the prior (one
decoder pass per image, whatever --nfe), its bits/dim the importance-weighted bound with
--iwae_samples draws (elbo_bpd: the negative ELBO's), on the same dequantised test images, and
bpd_nfe the decoder passes per image (times the classes: a conditional VAE's p(x) is
marginalised over them, as the diffusion runs are scored unconditionally).
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags

from jldm import api
from jldm.build import build_sde, samplers
from jldm.cli import run_main
from jldm.errors import UserError
from jldm.sampling.run import decode, encode_images

flags.DEFINE_integer("nfe", 200, "Network evaluations per image, guidance included.")
flags.DEFINE_integer("per_class", 50, "Samples per class for the quality figures.")
flags.DEFINE_float("guidance", None, "Guidance scale for every run (default: each config's).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("bpd_images", 256, "Test images for bits/dim (0 skips it).")
flags.DEFINE_integer("bpd_steps", 0, "Fixed RK4 steps of the likelihood ODE (0: adaptive).")
flags.DEFINE_float("bpd_tol", 1e-5, "Tolerance of the adaptive likelihood ODE solver.")
flags.DEFINE_integer(
    "iwae_samples",
    None,
    "VAE runs: importance samples K (default: each config's vae.iwae_samples).",
)
flags.DEFINE_string("out", "compare", "Output prefix: OUT.md and OUT.jsonl.")
FLAGS = flags.FLAGS

COLUMNS = [
    ("run", "{}"),
    ("objective", "{}"),
    ("sampler", "{}"),
    ("nfe", "{}"),
    ("compile_s", "{:.1f}"),
    ("sample_s", "{:.2f}"),
    ("images_s", "{:.1f}"),
    ("train_steps_s", "{:.2f}"),
    ("stage1_steps_s", "{:.2f}"),
    ("class_accuracy", "{:.3f}"),
    ("frechet", "{:.2f}"),
    ("precision", "{:.3f}"),
    ("recall", "{:.3f}"),
    ("bits_per_dim", "{:.3f}"),
    ("elbo_bpd", "{:.3f}"),
    ("bpd_nfe", "{:.0f}"),
    ("ae_psnr", "{:.2f}"),
]


def train_speed(workdir: str) -> float | None:
    """Median steps/s logged in WORKDIR/metrics.jsonl (None without a log or figures)."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None
    speeds = [r["steps_per_sec"] for r in rows if r.get("steps_per_sec") is not None]
    return float(np.median(speeds)) if speeds else None


def autoencoder_error(run: api.Loaded, num: int = 500) -> dict:
    """Stage 1 of a latent run on the first num test images: decode(encode(x)) against x.

    -> ae_mse (on [-1, 1]), ae_l1 (mean |error| per pixel on [-1, 1]), ae_psnr (dB on [0, 1]).
    """
    from jldm.data import load_split, preprocess

    d = run.config.data
    test = load_split(d.name, "test", d.data_dir, d.fashion_dir)
    x = np.asarray(preprocess(test.images[:num], d.resolution), np.float32)
    stage1 = run.stage1
    recon = np.asarray(
        jax.jit(lambda p, z: decode(stage1, p, z))(stage1.params, encode_images(run, x))
    )
    mse = float(np.mean((recon - x) ** 2))
    return {
        "ae_mse": mse,
        "ae_l1": float(np.mean(np.abs(recon - x))),
        "ae_psnr": float(10 * np.log10(4.0 / mse)),  # peak 1 on [0, 1] is 2 on [-1, 1]
        "ae_images": len(x),
    }


def timed(gen, seed: int) -> tuple[np.ndarray, float, float]:
    """(images, compile seconds, sampling seconds) of one call of a Generator."""
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    compiled = gen.fn.lower(*gen.args(key)).compile()
    t1 = time.perf_counter()
    images = np.asarray(jax.block_until_ready(compiled(*gen.args(key))))
    return images, t1 - t0, time.perf_counter() - t1


def vae_row(run: api.Loaded, per_class: int, seed: int, bpd_images: int, samples: int | None):
    """The figures of a VAE run: prior samples timed, their quality, its bits/dim bounds."""
    from jldm.build.vae import is_conditional
    from jldm.eval.quality import sample_quality
    from jldm.sampling.vae import prior_generator
    from jldm.sampling.vae_likelihood import eval_pixels, has_density, vae_bits_per_dim

    config = run.config
    d = config.data
    labels = np.repeat(np.arange(d.num_classes, dtype=np.int32), per_class)
    gen = prior_generator(run, labels, temperature=config.sample.temperature)
    images, compile_s, sample_s = timed(gen, seed)
    row = {
        "objective": "vae",
        "parameterization": config.model.likelihood,
        "sampler": "prior",
        "steps": 1,
        "nfe": 1,
        "compile_s": compile_s,
        "sample_s": sample_s,
        "images_s": len(labels) / sample_s,
        "num_samples": len(labels),
    }
    if d.name in ("digits", "fashion_mnist"):
        cond = labels if is_conditional(config) else None
        q = sample_quality(images, cond, d.name, d.data_dir, d.fashion_dir)
        row.update({k: q.get(k) for k in ("class_accuracy", "frechet", "precision", "recall")})
    if bpd_images > 0 and has_density(config):
        pixels, _ = eval_pixels(config, bpd_images)
        out = vae_bits_per_dim(run, pixels, seed=seed, samples=samples)
        prefix = "" if out["data"] == "8-bit" else "binary_"  # binary: not the same data
        row.update(
            {
                f"{prefix}bits_per_dim": float(np.mean(out["iwae"])),
                f"{prefix}elbo_bpd": float(np.mean(out["elbo"])),
                "bpd_images": len(pixels),
                "bpd_nfe": float(out["decoder_evals"]),
                "iwae_samples": out["samples"],
            }
        )
    return row


def compare_one(
    workdir: str,
    nfe: int,
    per_class: int,
    guidance: float | None,
    seed: int,
    bpd_images: int,
    bpd_steps: int = 0,
    bpd_tol: float = 1e-5,
    iwae_samples: int | None = None,
) -> dict:
    """One row of the table for the run in workdir (guidance None: the run's config)."""
    from jldm.build.vae import is_vae
    from jldm.eval.quality import sample_quality
    from jldm.sampling.vae_likelihood import eval_pixels

    run = api.load(workdir)
    base = {
        "run": os.path.basename(os.path.normpath(workdir)),
        "workdir": workdir,
        "step": run.step,
        "train_steps_s": train_speed(workdir),
    }
    if is_vae(run.config):
        return {**base, **vae_row(run, per_class, seed, bpd_images, iwae_samples)}
    d, s = run.config.data, run.config.sample
    stage1_speed = None
    if run.stage1 is not None:
        from jldm.train.ldm import stage1_folder

        stage1_speed = train_speed(stage1_folder(run.config, workdir))
    g = s.guidance if guidance is None else guidance
    # ddpm runs every one of its T steps: its NFE is reported as it is.
    steps = samplers.steps_for_nfe(run.config, s.sampler, nfe, g)
    labels = np.repeat(np.arange(d.num_classes, dtype=np.int32), per_class)
    gen = api.make_generator(
        run, api.conditions(run, labels), sampler=s.sampler, steps=steps, guidance=g, eta=s.eta
    )
    images, compile_s, sample_s = timed(gen, seed)
    row = {
        **base,
        "objective": run.config.diffusion.objective,
        "parameterization": run.config.diffusion.parameterization,
        "sampler": s.sampler,
        "steps": steps,
        "nfe": samplers.nfe(run.config, s.sampler, steps, g),
        "guidance": g,
        "compile_s": compile_s,
        "sample_s": sample_s,
        "images_s": len(labels) / sample_s,
        "stage1_steps_s": stage1_speed,
        "num_samples": len(labels),
        "bits_per_dim": None,
    }
    if d.name in ("digits", "fashion_mnist"):
        q = sample_quality(images, labels, d.name, d.data_dir, d.fashion_dir)
        row.update({k: q.get(k) for k in ("class_accuracy", "frechet", "precision", "recall")})
    if run.stage1 is not None:
        row.update(autoencoder_error(run))
    if bpd_images > 0 and build_sde(run.config) is not None:
        u8, _ = eval_pixels(run.config, bpd_images)  # the test split rendered at 8 bits
        bpd, bpd_nfe = api.bits_per_dim(
            run, u8, seed=seed, steps=bpd_steps or None, tol=bpd_tol, with_nfe=True
        )
        row.update(
            bits_per_dim=float(np.mean(bpd)), bpd_images=len(bpd), bpd_nfe=float(bpd_nfe.mean())
        )
    return row


def markdown(rows: list[dict]) -> str:
    """The table of rows as Markdown; missing figures show as '-'."""
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = [fmt.format(r[n]) if r.get(n) is not None else "-" for n, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(workdirs: list[str]) -> None:
    if not workdirs:
        raise UserError("compare needs workdirs: python -m jldm.compare RUN1 RUN2 ...")
    if FLAGS.nfe < 1 or FLAGS.per_class < 1:
        raise UserError("--nfe and --per_class must be >= 1")
    missing = [w for w in workdirs if not os.path.isdir(w)]
    if missing:
        raise UserError(f"workdir {missing[0]} does not exist: pass folders written by train.py")
    rows = []
    for w in workdirs:
        row = compare_one(
            os.path.abspath(w),
            FLAGS.nfe,
            FLAGS.per_class,
            FLAGS.guidance,
            FLAGS.seed,
            FLAGS.bpd_images,
            FLAGS.bpd_steps,
            FLAGS.bpd_tol,
            FLAGS.iwae_samples,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows)
    out = os.path.abspath(FLAGS.out)
    try:
        with open(out + ".md", "w") as f:
            f.write(table + "\n")
        with open(out + ".jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    except OSError as e:
        raise UserError(f"cannot write {out}.md ({e.strerror}): pick another --out") from None
    print(table)
    print(f"table: {out}.md {out}.jsonl")


def run() -> None:
    """The jldm-compare command (and python -m jldm.compare)."""
    run_main(main, positional=True)


if __name__ == "__main__":
    run()
