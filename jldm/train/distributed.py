"""Multi-process (multi-host) runs: jax.distributed.initialize from flags or the environment.

Must run before anything touches a JAX backend (jax.devices, an array, a jit call).
"""

import os
from collections.abc import Mapping
from typing import NamedTuple

from jldm.errors import UserError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class Settings(NamedTuple):
    """Where process 0 listens (host:port), how many processes there are, and which one this is."""

    coordinator: str
    num_processes: int
    process_id: int


def _int(value: str | int | None, name: str, flag: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} is not an integer: set {flag} to one") from None


def settings(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings | None:
    """Flags, else the JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID env; None: one process."""
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES, "--num_processes")
    if process_id is None:
        process_id = _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID, "--process_id")
    given = {
        "--coordinator": coordinator,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(
            f"a multi-process run needs --coordinator, --num_processes and --process_id (or "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}): {', '.join(missing)} "
            "missing"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--coordinator={coordinator!r} is not host:port: give process 0's address, "
            "e.g. 10.0.0.1:1234"
        )
    if num_processes < 1:
        raise UserError(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
        raise UserError(
            f"--process_id={process_id} is not in 0..{num_processes - 1}: number the processes "
            f"0 to --num_processes - 1"
        )
    return Settings(coordinator, num_processes, process_id)


def initialize(s: Settings | None, timeout_s: int = 300) -> None:
    """Join the run described by s (None: single process, nothing to do)."""
    if s is None or s.num_processes == 1:
        return
    import jax

    try:
        jax.distributed.initialize(
            s.coordinator,
            s.num_processes,
            s.process_id,
            initialization_timeout=timeout_s,
            # Process 0 alone samples the final grid after training while the others wait for
            # it at exit; the default 300 s ends a finished run with an abort on slow hosts.
            shutdown_timeout_seconds=3600,
        )
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot join the run at {s.coordinator} as process {s.process_id} of "
            f"{s.num_processes} ({first[:160]}): check that every process got the same "
            "--coordinator and --num_processes and that process 0 is running"
        ) from None
    if jax.default_backend() == "cpu":
        # CPU collectives (gloo) give up when the processes reach a collective more than 30 s
        # apart. The persistent compilation cache keys CPU executables per process and only
        # process 0 writes it, so on a rerun process 0 loads its programs while the others
        # compile for minutes, and the run dies at the first step. Compiling everywhere keeps
        # the processes in step.
        jax.config.update("jax_enable_compilation_cache", False)
