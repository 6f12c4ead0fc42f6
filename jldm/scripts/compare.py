"""Compare trained runs: python -m jldm.compare W1 W2 ... --nfe 200 (or --grid).

--nfe: each run's sampler at about --nfe network evaluations per image (guidance included): a
table (OUT.md, OUT.jsonl) of sampling and training speed, class accuracy, Frechet and kernel
distances, precision and recall in the project's classifier space, and the test split's
bits/dim where the model has a density (jldm.sampling.likelihood.summary) with its evaluations
per image. --grid: every sampler of each run (or of --samplers) at each of --budgets, one row
per step count (none above the largest budget), and the bits/dim table; OUT.png and OUT.pdf
plot Frechet distance and recall against NFE, one line per objective/sampler, with the figures
of as many real training images (the samples' classes, at the model's resolution) dashed.
A setting whose samples diverge (NaN or Inf) is a row marked diverged, the others are still
made, and the command ends with exit 2 and one line naming the diverged settings."""

import json
import math

from absl import flags

from jldm import compare
from jldm.cli import run_main
from jldm.data.paths import resolve
from jldm.errors import UserError
from jldm.eval.plot import nfe_plot

# Its own flags, not absl's global ones: importing jldm defines none (jldm.cli.run_cli).
FLAGS = flags.FlagValues()

flags.DEFINE_integer(
    "nfe", 200, "Network evaluations per image, guidance included.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "grid",
    False,
    "Run every sampler at every --budgets NFE; plot OUT.png, OUT.pdf.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "budgets", ["10", "20", "50", "100", "200"], "--grid: NFE budgets.", flag_values=FLAGS
)
flags.DEFINE_list(
    "samplers", [], "--grid: samplers to run (default: each objective's all).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "per_class", 50, "Samples per class for the quality figures.", flag_values=FLAGS
)
flags.DEFINE_float(
    "guidance", None, "Guidance scale for every run (default: each config's).", flag_values=FLAGS
)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.DEFINE_integer("bpd_images", 256, "Test images for bits/dim (0 skips it).", flag_values=FLAGS)
flags.DEFINE_integer(
    "bpd_steps", 0, "Fixed RK4 steps of the likelihood ODE (0: adaptive).", flag_values=FLAGS
)
flags.DEFINE_float(
    "bpd_tol", 1e-5, "Tolerance of the adaptive likelihood ODE solver.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "bpd_max_steps", 2000, "Step attempts of the adaptive ODE per image.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "bpd_terms", 0, "ddpm: terms of the bound's estimate (0: all T).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "iwae_samples", None, "VAE runs: importance samples K (default: config's).", flag_values=FLAGS
)
flags.DEFINE_string(
    "out", "compare", "Output prefix: OUT.md, OUT.jsonl (and --grid: OUT.png).", flag_values=FLAGS
)


_BPD_KEYS = ("bits_per_dim", "elbo_bpd", "bpd_nfe", "binary_bits_per_dim", "binary_elbo_bpd")


def _setting(row: dict) -> str:
    """run NAME (SAMPLER, N steps): the run and sampler setting of a row."""
    return f"run {row.get('run')}" + (
        f" ({row['sampler']}, {row['steps']} steps)" if row.get("steps") is not None else ""
    )


def _refuse_nonfinite(row: dict) -> None:
    """A figure that is NaN or Inf is not a result: one error line instead of the row."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return
    where = _setting(row)
    if any(k in _BPD_KEYS for k in bad):
        fix = "lower --bpd_tol, give --bpd_steps, or skip bits/dim with --bpd_images=0"
    else:
        fix = "its samples may have diverged: look at them with sample.py"
    raise UserError(
        f"{where}: {', '.join(f'{k} came out {row[k]}' for k in bad)}, which is not a result; "
        f"no table was written: {fix}"
    )


def _print_row(row: dict) -> None:
    _refuse_nonfinite(row)
    print(json.dumps(row), flush=True)


def _refuse_diverged(rows: list[dict], out: str) -> None:
    """Once the tables are written: the settings whose samples diverged as one error line."""
    bad = [_setting(r) for r in rows if r.get("diverged")]
    if bad:
        raise UserError(
            f"{'; '.join(bad)}: samples came out NaN or Inf (diverged), marked so in {out}.md: "
            "look at them with sample.py, or give more steps, another sampler or less guidance"
        )


def _check_flags(workdirs: list[str]) -> list[int]:
    """Every flag, output path and run checked before the first sample: -> the budgets."""
    from jldm.build import samplers
    from jldm.build.vae import is_vae
    from jldm.runs.load import check_run, check_workdir
    from jldm.runs.workdir import check_output_file

    f = FLAGS
    if not workdirs:
        raise UserError("compare needs workdirs: python -m jldm.compare RUN1 RUN2 ...")
    try:
        budgets = [int(b) for b in f.budgets]
    except ValueError:
        raise UserError(f"--budgets={','.join(f.budgets)}: give integers, e.g. 10,20") from None
    if f.nfe < 1 or f.per_class < 1 or not budgets or min(budgets) < 1:
        raise UserError("--nfe, --per_class and every --budgets value must be >= 1")
    for name in ("bpd_images", "bpd_steps"):
        if f[name].value < 0:
            raise UserError(f"--{name}={f[name].value} must be >= 0")
    if not (math.isfinite(f.bpd_tol) and 0 < f.bpd_tol < 1):
        raise UserError(
            f"--bpd_tol={f.bpd_tol} must be in (0, 1): the adaptive likelihood ODE's relative "
            "and absolute tolerance (default 1e-5)"
        )
    if f.bpd_max_steps < 1:
        raise UserError(f"--bpd_max_steps={f.bpd_max_steps} must be >= 1")
    if f.bpd_terms == 1 or f.bpd_terms < 0:
        raise UserError(f"--bpd_terms={f.bpd_terms}: give 0 (all T terms) or >= 2")
    if f.iwae_samples is not None and f.iwae_samples < 1:
        raise UserError(f"--iwae_samples={f.iwae_samples} must be >= 1 (leave it out: config's)")
    if f.guidance is not None and not math.isfinite(f.guidance):
        raise UserError(f"--guidance={f.guidance} must be a finite number")
    for name in f.samplers:
        try:
            samplers.get(name)
        except UserError as e:
            raise UserError(f"--samplers: {e}") from None
    if not f.out or f.out.endswith(("/", "\\")):
        raise UserError(f"--out={f.out!r} is a prefix of file names (OUT.md, OUT.jsonl): name one")
    out = resolve(f.out)
    for ext in (".md", ".jsonl", *((".png", ".pdf") if f.grid else ())):
        check_output_file(out + ext, "--out")
    for w in workdirs:
        check_workdir(w)
    configs = [check_run(resolve(w)) for w in workdirs]
    for w, config in zip(workdirs, configs, strict=True):
        if not f.grid and not is_vae(config):
            g = compare.guidance_of(config, f.guidance)
            try:
                samplers.check_nfe(config, config.sample.sampler, f.nfe, g)
            except UserError as e:
                raise UserError(f"{w}: {e}") from None
    return budgets


def main(workdirs: list[str]) -> None:
    """The table (or with --grid, the grid, bits/dim table and plot) of the runs in workdirs."""
    budgets = _check_flags(workdirs)
    out, f = resolve(FLAGS.out), FLAGS
    options = compare.bpd_options(
        f.bpd_steps, f.bpd_tol, f.bpd_max_steps, f.bpd_terms, f.iwae_samples
    )
    if not f.grid:
        rows = []
        for w in workdirs:
            rows.append(compare.compare_one(resolve(w), f.nfe, f.per_class, f.guidance, f.seed,
                                            f.bpd_images, f.bpd_steps, f.bpd_tol, f.iwae_samples,
                                            f.bpd_max_steps, f.bpd_terms))  # fmt: skip
            _print_row(rows[-1])
        compare.write_tables(out, compare.markdown(rows), rows)
        print(compare.markdown(rows) + f"\ntable: {out}.md {out}.jsonl")
        _refuse_diverged(rows, out)
        return
    grid, bpd, real = compare.compare_grid(
        workdirs, budgets, f.per_class, f.guidance, f.seed, f.bpd_images, options,
        tuple(f.samplers), on_row=_print_row,
    )  # fmt: skip
    reals = [real] if real else []
    for row in bpd + reals:
        _refuse_nonfinite(row)
    text = compare.markdown(grid + reals, compare.GRID_COLUMNS)
    text += "\n\n" + compare.markdown(bpd, compare.BPD_COLUMNS)
    tagged = [{"table": "grid", **r} for r in grid + reals]
    compare.write_tables(out, text, tagged + [{"table": "bits_per_dim", **r} for r in bpd])
    plotted = any(r.get("frechet") is not None for r in grid)
    figures = nfe_plot(grid, real, out + ".png", out + ".pdf") if plotted else []
    shown = f"; plot: {' '.join(figures)}" if figures else ""
    print(text + f"\ntables: {out}.md {out}.jsonl" + shown)
    _refuse_diverged(grid, out)


def run() -> None:
    """The jldm-compare command (and python -m jldm.compare)."""
    run_main(main, positional=True, flag_values=FLAGS)


if __name__ == "__main__":
    run()
