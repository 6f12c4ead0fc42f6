"""Helpers for tests that run train.py and sample.py as a user does, or call them in-process."""

import logging
import signal
import subprocess
import sys

from tests.tiny import ROOT, tiny_flags


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python ARGS...` in the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def train_args(workdir, data_dir, *extra: str) -> list[str]:
    """train.py on the tiny digits config."""
    return [
        "train.py",
        "--config",
        "configs/digits_ddpm.py",
        "--workdir",
        str(workdir),
        *tiny_flags(str(data_dir)),
        *extra,
    ]


def assert_error_line(returncode: int, stderr: str, *words: str) -> None:
    """Exit code 2 and exactly one stderr line, `error: ...`, containing every word."""
    assert returncode == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """assert_error_line for a finished process."""
    assert_error_line(proc.returncode, proc.stderr, *words)


def process_state() -> tuple:
    """Stop-signal handlers, exception hooks, asyncio log filters, the jldm logger's handlers,
    level and propagation: what a CLI called in-process must leave as it found them (the test
    process lives on after it)."""
    handlers = tuple(signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT))
    hooks = (sys.excepthook, sys.unraisablehook, tuple(logging.getLogger("asyncio").filters))
    jldm = logging.getLogger("jldm")
    return handlers, hooks, (tuple(jldm.handlers), jldm.level, jldm.propagate)
