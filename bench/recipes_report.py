"""The recipe study's table and plot: quality against minutes on this machine.

    python bench/recipes_report.py --study docs/recipes/digits

Reads STUDY.jsonl (bench/recipes.py: figures by recipe, step and sampling setting, and the real
images' rows) and STUDY_time.jsonl (bench/recipes.py --time: seconds per train step and start-up
of each recipe on an idle machine). Minutes of a row = (start-up + step * seconds per step) / 60:
what `train.py` of that recipe costs to reach the row's step; the seconds its 500 samples took
(as the study measured them) stand beside it. Writes STUDY.md (every row, the Pareto rows
marked, the targets met) and STUDY.png/.pdf (Frechet as a multiple of the real images' at the
same resolution, against minutes; one line per recipe and setting; the real images dashed at 1,
the target dotted at 1.5).
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Targets at 500 samples, against 500 real training images at the same resolution, per dataset
# (the digits demo's; Fashion-MNIST's 30-minute recipe): class accuracy, and recall, precision
# and Frechet as multiples of the real images' figures.
# Frechet is compared at equal n (both 500 against the test split), so their small-sample bias is
# the same; FD_inf, which removes it, is near 0 for real images (train and test are one
# distribution), where a ratio means nothing: it is reported as is.
TARGETS = {
    "digits": {"class_accuracy": 0.99, "recall": 0.95, "precision": 0.95, "frechet": 1.5},
    "fashion_mnist": {"class_accuracy": 0.85, "recall": 0.0, "precision": 0.0, "frechet": 2.0},
}


def _read(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _where(row: dict) -> tuple[str, int]:
    """(dataset, resolution) of a study row; rows written before the dataset was recorded are
    digits."""
    return row.get("data", "digits"), row["resolution"]


def rows_with_minutes(study: list[dict], times: list[dict]) -> tuple[list[dict], dict]:
    """(sample rows with minutes and ratios to the real images, real rows by (data, resolution))."""
    speed = {t["recipe"]: t for t in times}  # the last timing of a recipe wins
    real = {_where(r): r for r in study if r["recipe"] == "real"}
    rows = []
    for r in study:
        if r["recipe"] == "real" or r["recipe"] not in speed or "step" not in r:
            continue
        t = speed[r["recipe"]]
        seconds = t["start_s"] + r["step"] * t["s_per_step"]
        ref = real[_where(r)]
        row = dict(r, minutes=seconds / 60.0)
        row["frechet_x"] = r["frechet"] / ref["frechet"]
        row["recall_x"] = r["recall"] / ref["recall"]
        row["precision_x"] = r["precision"] / ref["precision"]
        target = TARGETS[_where(r)[0]]
        row["meets"] = (
            r["class_accuracy"] >= target["class_accuracy"]
            and row["recall_x"] >= target["recall"]
            and row["precision_x"] >= target["precision"]
            and row["frechet_x"] <= target["frechet"]
        )
        rows.append(row)
    rows.sort(key=lambda r: r["minutes"])
    best = float("inf")
    for row in rows:  # Pareto: no faster row is closer to its real images' Frechet
        row["pareto"] = row["frechet_x"] < best
        best = min(best, row["frechet_x"])
    return rows, real


def markdown(rows: list[dict], real: dict) -> str:
    head = "| recipe | step | sampler | steps | guidance | train minutes | sample s | class acc. "
    head += "| Frechet (x real) | FD_inf | kid | precision (x real) | recall (x real) "
    head += "| Pareto | targets |\n"
    head += "|" + " --- |" * 15 + "\n"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['step']} | {r['sampler']} | {r['steps']} | {r['guidance']:g} "
            f"| {r['minutes']:.2f} | {r['sample_s']:.1f} | {r['class_accuracy']:.3f} "
            f"| {r['frechet']:.2f} ({r['frechet_x']:.2f}) | {r['fd_inf']:.2f} | {r['kid']:.3f} "
            f"| {r['precision']:.3f} ({r['precision_x']:.2f}) "
            f"| {r['recall']:.3f} ({r['recall_x']:.2f}) | {'yes' if r['pareto'] else ''} "
            f"| {'met' if r['meets'] else ''} |\n"
        )
    for (data, res), r in sorted(real.items()):
        lines.append(
            f"| real {data} training images, {res}x{res} | | | | | | | {r['class_accuracy']:.3f} "
            f"| {r['frechet']:.2f} | {r['fd_inf']:.2f} | {r['kid']:.3f} | {r['precision']:.3f} "
            f"| {r['recall']:.3f} | | |\n"
        )
    return "".join(lines)


def plot(rows: list[dict], real: dict, out: str) -> None:
    """One line per recipe: at each evaluated step, the Frechet ratio of its best setting among
    those whose class accuracy meets the dataset's target (all settings if none does)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = {}
    for r in rows:
        points.setdefault(r["recipe"], {}).setdefault(r["step"], []).append(r)
    for recipe, by_step in sorted(points.items()):
        xs, ys = [], []
        for _, rs in sorted(by_step.items()):
            floor = TARGETS[_where(rs[0])[0]]["class_accuracy"]
            ok = [r for r in rs if r["class_accuracy"] >= floor] or rs
            xs.append(rs[0]["minutes"])
            ys.append(min(r["frechet_x"] for r in ok))
        ax.plot(xs, ys, marker="o", label=recipe)
    ax.axhline(1.0, linestyle="--", color="gray")
    for data in sorted({_where(r)[0] for r in rows}):
        ax.axhline(TARGETS[data]["frechet"], linestyle=":", color="gray")
    ax.set_xlabel("minutes of training (train.py, 2 CPU cores)")
    ax.set_ylabel("Frechet / real images' Frechet (n = 500)")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{out}.{ext}")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="docs/recipes/digits")
    args = p.parse_args()
    rows, real = rows_with_minutes(_read(args.study + ".jsonl"), _read(args.study + "_time.jsonl"))
    with open(args.study + ".md", "w") as f:
        f.write(markdown(rows, real))
    plot(rows, real, args.study)
    for r in rows:
        if r["pareto"]:
            print(json.dumps({k: r[k] for k in ("recipe", "step", "sampler", "steps", "guidance",
                                                 "minutes", "frechet_x", "meets")}))  # fmt: skip


if __name__ == "__main__":
    main()
