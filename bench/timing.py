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
