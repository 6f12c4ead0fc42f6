"""Compare trained runs: the table and grid behind jldm-compare (jldm/scripts/compare.py, also
`python -m jldm.compare W1 W2 ... --nfe 200`).

compare_one: a run's sampler at about nfe network evaluations per image (guidance included):
sampling and training speed, class accuracy, Frechet and kernel distances, precision and recall
in the project's classifier space, and the test split's bits/dim where the model has a density
(jldm.sampling.likelihood.summary) with its evaluations per image. compare_grid: every sampler
of each run at each NFE budget, one row per step count (none above the largest budget), and the
bits/dim table, which jldm.eval.plot.nfe_plot draws as Frechet distance and recall against NFE,
one line per objective/sampler, with the figures of as many real training images (the samples'
classes, at the model's resolution) dashed."""

import json
import math
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from jldm import api
from jldm.build import objectives, samplers
from jldm.data.datasets import dataset_of, has_quality, reference_split
from jldm.data.paths import isfile, join, read_text, resolve, write_text_atomic
from jldm.errors import UserError
from jldm.sampling import likelihood
from jldm.sampling.run import decode, encode_images

_RUN = [("run", "{}"), ("objective", "{}")]
_QUALITY = [("class_accuracy", "{:.3f}"), ("frechet", "{:.2f}"), ("kid", "{:.3f}")]
_QUALITY += [("precision", "{:.3f}"), ("recall", "{:.3f}")]
_BPD = [("bits_per_dim", "{:.3f}"), ("elbo_bpd", "{:.3f}"), ("bpd_nfe", "{:.0f}")]
_SPEED = [("compile_s", "{:.1f}"), ("sample_s", "{:.2f}"), ("images_s", "{:.1f}")]
COLUMNS = [*_RUN, ("sampler", "{}"), ("nfe", "{}"), *_SPEED]
COLUMNS += [("train_steps_s", "{:.2f}"), ("stage1_steps_s", "{:.2f}"), *_QUALITY, *_BPD]
COLUMNS += [("ae_psnr", "{:.2f}")]
GRID_COLUMNS = [*_RUN, ("sampler", "{}"), ("steps", "{}"), ("nfe", "{}"), *_QUALITY]
GRID_COLUMNS += [("sample_s", "{:.2f}")]
BPD_COLUMNS = [*_RUN, ("bpd_method", "{}"), *_BPD, ("bpd_images", "{}")]
_FIGURES = ("class_accuracy", "frechet", "kid", "precision", "recall")


def train_speed(workdir: str) -> float | None:
    """Median steps/s logged in WORKDIR/metrics.jsonl, local or cloud (None without a log or
    figures).

    A run being trained appends to its log while this reads it, so an unfinished last line
    (no newline yet) is left out; any other line that is no JSON record is a UserError naming
    the file and line: a resumed run rewrites its log to whole records
    (jldm.train.metrics_log.rewind), so such a line was written from outside.
    """
    path = join(workdir, "metrics.jsonl")
    if not isfile(path):
        return None
    lines = read_text(path).split("\n")
    speeds = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: "" or an unfinished line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            speed = record.get("steps_per_sec")
        except (ValueError, AttributeError):
            raise UserError(
                f"{path}:{number} is no JSON record: remove or repair that line of the run's log"
            ) from None
        if speed is not None:
            speeds.append(speed)
    return float(np.median(speeds)) if speeds else None


def autoencoder_error(run: api.Loaded, num: int = 500) -> dict:
    """Stage 1 of a latent run on the first num test images: decode(encode(x)) against x.

    -> ae_mse (on [-1, 1]), ae_l1 (mean |error| per pixel on [-1, 1]), ae_psnr (dB on [0, 1]).
    """
    from jldm.data import load_split, preprocess

    d = run.config.data
    test = load_split(dataset_of(d), reference_split(d.name))
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


def quality(images: np.ndarray, labels: np.ndarray, config) -> dict:
    """class_accuracy, frechet, precision, recall of images in [0, 1] (digits, Fashion-MNIST)."""
    from jldm.eval.quality import sample_quality

    d = config.data
    if not has_quality(d.name):
        return {}
    q = sample_quality(images, labels, dataset_of(d))
    return {k: q.get(k) for k in _FIGURES}


def sample_row(run: api.Loaded, sampler: str, steps: int, g: float, per_class: int, seed: int):
    """per_class samples of every class by sampler in steps at guidance g (a VAE: its prior,
    one decoder pass per image), timed and scored. Samples or figures that came out NaN or Inf
    give a row without figures and with diverged: True."""
    from jldm.build.vae import is_vae

    config = run.config
    labels = np.repeat(np.arange(config.data.num_classes, dtype=np.int32), per_class)
    if is_vae(config):
        gen = api.make_generator(run, labels, temperature=config.sample.temperature)
        what = {"objective": "vae", "parameterization": config.model.likelihood}
        what.update(sampler="prior", steps=1, nfe=1)
    else:
        cond, f = api.conditions(run, labels), config.diffusion
        gen = api.make_generator(run, cond, sampler=sampler, steps=steps, guidance=g,
                                 eta=config.sample.eta)  # fmt: skip
        what = {"objective": f.objective, "parameterization": objectives.network_output(config)}
        what.update(sampler=sampler, steps=steps, guidance=g)
        what["nfe"] = samplers.nfe(config, sampler, steps, g)
    images, compile_s, sample_s = timed(gen, seed)
    what.update(compile_s=compile_s, sample_s=sample_s, images_s=len(labels) / sample_s)
    row = {**what, "num_samples": len(labels)}
    if not np.isfinite(images).all():
        return {**row, "diverged": True}
    figures = quality(images, labels, config)
    if any(isinstance(v, float) and not math.isfinite(v) for v in figures.values()):
        return {**row, "diverged": True}
    return {**row, **figures}


def bpd_row(run: api.Loaded, images: int, seed: int, options: dict) -> dict:
    """bits/dim of the first `images` test images (8-bit at the model's resolution), their
    method and evaluations per image ({} where the run defines no density)."""
    from jldm.sampling.vae_likelihood import eval_pixels

    if images <= 0 or not likelihood.method(run.config):
        return {}
    pixels, _ = eval_pixels(run.config, images)
    return likelihood.summary(run, pixels, seed=seed, **options)


def bpd_options(steps=0, tol=1e-5, max_steps=2000, terms=0, iwae_samples=None) -> dict:
    """bits_per_dim's options from compare's settings (0: adaptive ODE, all T terms)."""
    return dict(steps=steps or None, tol=tol, max_steps=max_steps, terms=terms or None,
                iwae_samples=iwae_samples)  # fmt: skip


def _base(workdir: str, run: api.Loaded) -> dict:
    name = os.path.basename(os.path.normpath(workdir))
    return {"run": name, "workdir": workdir, "step": run.step, "bits_per_dim": None}


def guidance_of(config: ml_collections.ConfigDict, guidance: float | None) -> float:
    """guidance, or where None the run's config.sample.guidance (1.0 if it has none)."""
    return config.sample.get("guidance", 1.0) if guidance is None else guidance


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
    bpd_max_steps: int = 2000,
    bpd_terms: int = 0,
) -> dict:
    """One row of the table for the run in workdir (guidance None: the run's config)."""
    from jldm.build.vae import is_vae

    run = api.load(workdir)
    row = {**_base(workdir, run), "train_steps_s": train_speed(workdir), "stage1_steps_s": None}
    g = guidance_of(run.config, guidance)
    if is_vae(run.config):
        sampler, steps = "prior", 1
    else:
        sampler = run.config.sample.sampler
        samplers.check_nfe(run.config, sampler, nfe, g, "nfe")
        steps = samplers.steps_for_nfe(run.config, sampler, nfe, g)
    row.update(sample_row(run, sampler, steps, g, per_class, seed))
    if run.stage1 is not None:
        from jldm.runs.stage1_state import stage1_folder

        row["stage1_steps_s"] = train_speed(stage1_folder(run.config, workdir))
        row.update(autoencoder_error(run))
    options = bpd_options(bpd_steps, bpd_tol, bpd_max_steps, bpd_terms, iwae_samples)
    return {**row, **bpd_row(run, bpd_images, seed, options)}


def grid_rows(run: api.Loaded, budgets: list[int], per_class: int, guidance, seed: int, only=()):
    """The run's samplers (those in only, if given) at each budget: one row per sampler and
    step count, none above the largest budget. A VAE run gives its one prior row."""
    from jldm.build.vae import is_vae

    config = run.config
    if is_vae(config):
        return [sample_row(run, "prior", 1, 1.0, per_class, seed)]
    g = config.sample.guidance if guidance is None else guidance
    rows = []
    for sampler in [
        n for n in samplers.samplers_of(objectives.get(config)) if not only or n in only
    ]:
        steps = {samplers.steps_for_nfe(config, sampler, b, g) for b in budgets}
        for n in sorted(n for n in steps if samplers.nfe(config, sampler, n, g) <= max(budgets)):
            rows.append(sample_row(run, sampler, n, g, per_class, seed))
    return rows


def real_row(config, per_class: int, seed: int = 0) -> dict | None:
    """The quality figures of per_class real training images of every class, drawn at random
    (seed) and rendered at the model's resolution: what samples of the data distribution
    itself score (None where the dataset has no quality figures). A random draw, not the
    split's first images: those come from few writers and score as a less varied set."""
    from jldm.data import load_split, preprocess, to_unit

    d = config.data
    if not has_quality(d.name):
        return None
    train = load_split(dataset_of(d), "train")
    rng = np.random.default_rng(seed)
    pick = [
        rng.permutation(np.flatnonzero(train.labels == c))[:per_class] for c in range(d.num_classes)
    ]
    pick = np.concatenate(pick)
    images = to_unit(preprocess(train.images[pick], d.resolution))
    figures = quality(images, train.labels[pick], config)
    return {"run": "real", "objective": d.name, "sampler": "train split", **figures}


def markdown(rows: list[dict], columns=COLUMNS) -> str:
    """The table of rows as Markdown; missing figures show as '-', a diverged row's as
    'diverged'."""
    lines = ["| " + " | ".join(n for n, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        gone = "diverged" if r.get("diverged") else "-"
        cells = [
            fmt.format(r[n]) if r.get(n) is not None else gone if n in _FIGURES else "-"
            for n, fmt in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(out: str, text: str, rows: list[dict]) -> None:
    """OUT.md (text) and OUT.jsonl (rows), each written whole: local files or cloud objects."""
    try:
        write_text_atomic(out + ".md", text + "\n")
        write_text_atomic(out + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    except OSError as e:
        raise UserError(f"cannot write {out}.md ({e.strerror or e}): pick another --out") from None


def compare_grid(
    workdirs: list[str], budgets: list[int], per_class: int, guidance: float | None, seed: int,
    bpd_images: int, options: dict, only: tuple[str, ...] = (),
    on_row: Callable[[dict], None] | None = None,
) -> tuple[list[dict], list[dict], dict | None]:  # fmt: skip
    """(grid rows, one bits/dim row per run, the real images' row or None) of --grid; on_row
    sees each grid row as it is made."""
    from jldm.build.vae import is_vae

    grid, bpd, real = [], [], None
    for w in map(resolve, workdirs):
        run = api.load(w)
        for r in grid_rows(run, budgets, per_class, guidance, seed, only):
            grid.append({**_base(w, run), **r})
            if on_row is not None:
                on_row(grid[-1])
        objective = "vae" if is_vae(run.config) else run.config.diffusion.objective
        bpd.append({**_base(w, run), "objective": objective})
        bpd[-1].update(bpd_row(run, bpd_images, seed, options))
        real = real or real_row(run.config, per_class)
    return grid, bpd, real


if __name__ == "__main__":  # python -m jldm.compare: the jldm-compare command
    from jldm.scripts.compare import run

    run()
