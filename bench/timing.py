"""Timing and reporting shared by the bench scripts; imports neither jax nor torch."""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_root_to_path() -> None:
    """Make `configs` (and an uninstalled jldm) importable when a script runs as bench/x.py."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def measure(call: Callable[[], object], repeats: int, warmup: int) -> dict:
    """Run call() warmup times untimed, then repeats times timed; call must block until done.

    -> {"median_s", "min_s", "max_s", "repeats"} over the timed calls.
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


def spread(times: list[float]) -> dict:
    """Median, quartiles and extremes of a list of seconds."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median_s": statistics.median(times),
        "q25_s": q[0],
        "q75_s": q[2],
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Run the calls in turn, A B A B ..., warmup rounds untimed, then repeats timed rounds;
    each call must block until done. Load that comes and goes then hits every side alike.

    -> {name: spread of its times, plus "times_s": the times in round order}.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: dict(spread(ts), times_s=ts) for name, ts in times.items()}


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (`uptime`), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def emit(record: dict, out: str = "") -> None:
    """Print one JSON line (and append it to `out` when given)."""
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def load_config_file(path: str):
    """get_config() of a configs/*.py file, without absl (the peer script's environment)."""
    import importlib.util

    add_root_to_path()
    spec = importlib.util.spec_from_file_location("bench_config", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
