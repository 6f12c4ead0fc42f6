"""Every GPU figure of bench/README.md in one command, written to one JSON file.

    python bench/gpu.py --out bench_gpu.json                  # on a GPU, at most --budget_s
    python bench/gpu.py --tiny --out /tmp/bench_gpu_tiny.json  # tiny shapes on a CPU

Each case (bench/gpu_cases.py) runs a bench script in a process of its own, under a time
limit: a case that fails or runs over is recorded with its error and the next one starts, and
each peak-memory figure comes from a process of jldm's alone (the allocator's peak covers all
a process ran). The cases share compiled programs through JAX's persistent cache. The JSON
file is rewritten after every case. Exit status: 0 when every case ran (targets met or not), 1
when one failed, timed out or was skipped, 2 for a usage error or, without --tiny, no GPU.
bench/README.md describes the figures and the file's keys.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import timing
from gpu_cases import FIGURES, OPS, Case, cases

# Reported in the file; the bench scripts import all but the CUDA plugin (jldm needs orbax).
VERSIONS = (
    "jax jaxlib jax-cuda12-plugin flax optax orbax-checkpoint etils absl-py ml_collections numpy "
    "torch diffusers"
).split()
# Run in the cases' environment: the device a bench script gets.
PROBE = (
    "import jax, json; d = jax.devices()[0]; print(json.dumps({'platform': d.platform, "
    "'device_kind': d.device_kind, 'device_count': jax.device_count(), "
    "'allocator_limit_bytes': (d.memory_stats() or {}).get('bytes_limit')}))"
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device(env: dict) -> dict:
    """The device JAX gives a bench script in the cases' environment (PROBE), and
    nvidia-smi's name, memory and driver of each GPU where it is installed."""
    try:
        run = dict(cwd=timing.ROOT, env=env, capture_output=True, text=True, timeout=300)
        got = subprocess.run([sys.executable, "-c", PROBE], **run)
        device = json.loads(got.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        device = {"error": "the probe ran over 300 s"}
    except (IndexError, json.JSONDecodeError):
        device = {"error": (got.stdout + got.stderr)[-4000:]}
    smi = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    if shutil.which(smi[0]):
        try:
            got = subprocess.run(smi, capture_output=True, text=True, timeout=60)
            device["nvidia_smi"] = got.stdout.strip()
        except subprocess.SubprocessError as e:
            device["nvidia_smi"] = f"failed: {e}"
    return device


def _env(a: argparse.Namespace, cache: str) -> dict:
    """The cases' environment: one CPU device in --tiny mode, the GPU otherwise; JAX
    allocating as it goes; a persistent compilation cache the cases share."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if a.tiny:
        env["JAX_PLATFORMS"] = "cpu"
        flags = env.get("XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
        env["JLDM_CPU_DEVICES"] = "1"
    else:
        env["JAX_PLATFORMS"] = "cuda"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(a.jax_alone)
    return env


def _children_cpu_s() -> float:
    """User and system seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(case: Case, env: dict, work: str, left_s: float) -> dict:
    """Run one case's script for at most its limit and left_s (skipped below 30 s).

    -> its entry of "cases" in the JSON file."""
    out, log = (os.path.join(work, f"{case.name}.{ext}") for ext in ("jsonl", "log"))
    cmd = [sys.executable, os.path.join("bench", case.script), *case.args, f"--out={out}"]
    limit_s = min(case.limit_s, left_s)
    entry = dict(command=" ".join(cmd[1:-1]), limit_s=round(max(limit_s, 0), 1), records=[])
    if left_s < 30:
        skipped = dict(returncode=None, wall_s=0.0, cpu_s=0.0, error="--budget_s is spent")
        return dict(entry, status="skipped", **skipped)
    print(f"gpu.py: {case.name} (limit {limit_s:.0f} s)", flush=True)
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    env = {**env, **(case.env or {})}
    with open(log, "w") as f:
        # A session of its own, so a timeout ends the script and any process it started.
        proc = subprocess.Popen(
            cmd, cwd=timing.ROOT, env=env, stdout=f, stderr=f, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # over its limit, or this script was interrupted: end the case's processes
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rc = proc.returncode
    status = "timeout" if timed_out else "ok" if rc == 0 else "error"
    if os.path.exists(out):
        with open(out) as f:
            # A line cut short by a kill is left out.
            entry["records"] = [json.loads(x) for x in f if x.rstrip().endswith("}")]
    wanted = {fig[1] for fig in FIGURES[case.name]}
    if status == "ok" and not wanted <= {r.get("case") for r in entry["records"]}:
        status = "error"  # ran, but some record a figure reads is missing
    entry.update(status=status, returncode=rc, wall_s=round(time.perf_counter() - t0, 2))
    entry["cpu_s"] = round(_children_cpu_s() - cpu0, 2)
    with open(log, errors="replace") as f:
        entry["error"] = None if status == "ok" else f.read()[-4000:]
    return entry


def _value(record: dict, key: str) -> tuple[float | None, str]:
    """record's dotted key; a missing peak_bytes (the CPU reports none) falls back to XLA's
    buffer plan of the program. -> (value, the key it came from)."""
    node = record
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and key == "peak_bytes" and "xla_temp_bytes" in record:
        plan = ("xla_argument_bytes", "xla_output_bytes", "xla_temp_bytes")
        node = sum(record[k] for k in plan) - record.get("xla_alias_bytes", 0)
        key = "xla_plan_bytes"
    ok = isinstance(node, int | float) and math.isfinite(node)
    return (float(node) if ok else None), key


def figures(all_cases: list[Case], results: dict) -> dict:
    """{"targets": how many were met, missed and unmeasured, "figures": {name: value, unit,
    target, whether it was met}} of the cases that ran."""
    table = {}
    for case in all_cases:
        records = results.get(case.name, {}).get("records", [])
        for name, record, key, unit, target in FIGURES[case.name]:
            rec = next((r for r in reversed(records) if r.get("case") == record), {})
            value, source = _value(rec, key)
            if value is not None and unit == "GB":
                value = value / 1e9
            met = None if target is None or value is None else OPS[target[0]](value, target[1])
            table[name] = {"value": value, "unit": unit, "case": case.name, "source": source}
            table[name].update(target=target and {"op": target[0], "value": target[1]}, met=met)
    met = [f["met"] for f in table.values() if f["target"]]
    counts = {"met": met.count(True), "missed": met.count(False), "unmeasured": met.count(None)}
    return {"targets": counts, "figures": table}


def _write(path: str, report: dict) -> None:
    """report as indented JSON at path, atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench_gpu-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def _summary(table: dict) -> str:
    lines = ["| figure | value | target | met |", "| --- | --- | --- | --- |"]
    for name, f in table.items():
        value = "-" if f["value"] is None else f"{f['value']:.4g} {f['unit']}"
        target = f"{f['target']['op']} {f['target']['value']:g}" if f["target"] else ""
        met = {True: "yes", False: "no", None: ""}[f["met"]]
        lines.append(f"| {name} | {value} | {target} | {met} |")
    return "\n".join(lines)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_gpu.json", help="The JSON file written.")
    p.add_argument("--tiny", action="store_true", help="Tiny shapes on the CPU (for the test).")
    p.add_argument("--cases", default="", help="Comma-separated case names (default: all).")
    p.add_argument("--timeout_s", type=float, default=180.0, help="Base time limit of a case.")
    p.add_argument("--budget_s", type=float, default=540.0, help="Time limit of the whole run.")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="e.g. 989 (bf16, H100/H200).")
    p.add_argument("--jax_share", type=float, default=0.55, help="JAX's GPU share beside torch.")
    p.add_argument("--jax_alone", type=float, default=0.95, help="JAX's GPU share alone.")
    return p.parse_args()


def main() -> int:
    a = _args()
    # SIGTERM (a time limit around this script) unwinds like Ctrl-C, ending the running case.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen, names = cases(a), [n for n in a.cases.split(",") if n]
    if unknown := sorted(set(names) - {c.name for c in chosen}):
        print(f"gpu.py: --cases has {unknown}: use some of {[c.name for c in chosen]}")
        return 2
    chosen = [c for c in chosen if c.name in names] if names else chosen
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        print(f"gpu.py: the folder of --out={a.out} does not exist: create it first")
        return 2
    t0, started = time.perf_counter(), datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="jldm-bench-gpu-") as work:
        env = _env(a, os.path.join(work, "xla-cache"))
        device = _device(env)
        if not a.tiny and device.get("platform") != "gpu":
            found = device.get("platform") or device["error"].strip().splitlines()[-1][:200]
            print(
                f"gpu.py: JAX finds no GPU (JAX_PLATFORMS=cuda: {found}): run on a GPU machine, "
                "or pass --tiny for the CPU check"
            )
            return 2
        report = {"bench": "gpu", "tiny": a.tiny, "started": started.isoformat(timespec="seconds")}
        versions = {"python": platform.python_version(), **{p: _version(p) for p in VERSIONS}}
        report.update(argv=sys.argv[1:], device=device, versions=versions)
        report["host"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        results = {}
        for case in chosen:
            left = a.budget_s - (time.perf_counter() - t0)
            results[case.name] = run_case(case, env, work, left)
            report.update(figures(chosen, results), cases=results)
            report["wall_s"] = round(time.perf_counter() - t0, 1)
            _write(a.out, report)
    print(_summary(report["figures"]))
    bad = {n: r["status"] for n, r in results.items() if r["status"] != "ok"}
    print(f"gpu.py: wrote {a.out}" + (f"; not ok: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
