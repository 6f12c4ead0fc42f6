"""Compare trained runs: python -m jldm.compare W1 W2 ... --nfe 200 (or --grid).

--nfe: each run's sampler at about --nfe network evaluations per image (guidance included): a
table (OUT.md, OUT.jsonl) of sampling and training speed, class accuracy, Frechet and kernel
distances, precision and recall in the project's classifier space, and the test split's
bits/dim where the model has a density (jldm.sampling.likelihood.summary) with its evaluations
per image. --grid: every sampler of each run (or of --samplers) at each of --budgets, one row
per step count (none above the largest budget), and the bits/dim table; OUT.png plots Frechet
distance and recall against NFE, one line per objective/sampler, with the figures of as many
real training images (the samples' classes, at the model's resolution) dashed."""

import json

from absl import flags

from jldm import compare
from jldm.cli import run_main
from jldm.data.paths import isdir, resolve
from jldm.errors import UserError
from jldm.eval.plot import nfe_plot

# Its own flags, not absl's global ones: importing jldm defines none (jldm.cli.run_cli).
FLAGS = flags.FlagValues()

flags.DEFINE_integer(
    "nfe", 200, "Network evaluations per image, guidance included.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "grid", False, "Run every sampler at every --budgets NFE and plot OUT.png.", flag_values=FLAGS
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


def _print_row(row: dict) -> None:
    print(json.dumps(row), flush=True)


def main(workdirs: list[str]) -> None:
    """The table (or with --grid, the grid, bits/dim table and plot) of the runs in workdirs."""
    if not workdirs:
        raise UserError("compare needs workdirs: python -m jldm.compare RUN1 RUN2 ...")
    try:
        budgets = [int(b) for b in FLAGS.budgets]
    except ValueError:
        raise UserError(f"--budgets={','.join(FLAGS.budgets)}: give integers, e.g. 10,20") from None
    if FLAGS.nfe < 1 or FLAGS.per_class < 1 or not budgets or min(budgets) < 1:
        raise UserError("--nfe, --per_class and every --budgets value must be >= 1")
    missing = [w for w in workdirs if not isdir(w)]
    if missing:
        raise UserError(f"workdir {missing[0]} does not exist: pass folders written by train.py")
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
        return
    grid, bpd, real = compare.compare_grid(
        workdirs, budgets, f.per_class, f.guidance, f.seed, f.bpd_images, options,
        tuple(f.samplers), on_row=_print_row,
    )  # fmt: skip
    reals = [real] if real else []
    text = compare.markdown(grid + reals, compare.GRID_COLUMNS)
    text += "\n\n" + compare.markdown(bpd, compare.BPD_COLUMNS)
    tagged = [{"table": "grid", **r} for r in grid + reals]
    compare.write_tables(out, text, tagged + [{"table": "bits_per_dim", **r} for r in bpd])
    plotted = any(r.get("frechet") is not None for r in grid)
    png = nfe_plot(grid, real, out + ".png") if plotted else None
    print(text + f"\ntables: {out}.md {out}.jsonl" + (f"; plot: {png}" if png else ""))


def run() -> None:
    """The jldm-compare command (and python -m jldm.compare)."""
    run_main(main, positional=True, flag_values=FLAGS)


if __name__ == "__main__":
    run()
