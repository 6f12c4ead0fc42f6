"""Multi-process (multi-host) runs: jax.distributed.initialize from flags or the environment.

Explicit settings (--coordinator, --num_processes, --process_id, or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) come first. Without them, a job of several tasks under SLURM,
Open MPI or on a multi-host TPU slice joins by JAX's own cluster detection (AUTO), as does
--distributed=auto anywhere; --distributed=off keeps one process.
Must run before anything touches a JAX backend (jax.devices, an array, a jit call).
"""

import os
from collections.abc import Mapping
from typing import NamedTuple

from jldm.errors import UserError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


# Join by jax.distributed.initialize()'s own cluster detection.
AUTO = "auto"
MODES = ("", "auto", "off")


def _count(env: Mapping[str, str], *names: str) -> int:
    for name in names:
        try:
            return int(env.get(name, ""))
        except ValueError:
            continue
    return 1


def cluster(env: Mapping[str, str]) -> str | None:
    """The multi-process cluster environment this process runs in, or None."""
    # A job step (srun) of several tasks; a batch script or salloc shell alone is one process.
    if env.get("SLURM_STEP_ID") and _count(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") > 1:
        return "SLURM"
    if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "a multi-host TPU slice"
    return None


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
    mode: str = "",
) -> Settings | str | None:
    """Flags, else the JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID env; else AUTO in a
    cluster (or with mode "auto"); None: one process. mode "off": always None."""
    env = os.environ if environ is None else environ
    if mode not in MODES:
        raise UserError(f"--distributed={mode!r}: use auto or off (or leave it out)")
    if mode == "off":
        return None
    explicit = _explicit(coordinator, num_processes, process_id, env)
    if explicit is not None:
        return explicit
    return AUTO if mode == "auto" or cluster(env) else None


def _explicit(coordinator, num_processes, process_id, env) -> Settings | None:
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


def initialize(s: Settings | str | None, timeout_s: int = 300) -> None:
    """Join the run described by s (None: single process, nothing to do; AUTO: as JAX detects)."""
    if s is None or (s != AUTO and s.num_processes == 1):
        return
    import jax

    # Process 0 alone samples the final grid after training while the others wait for it at
    # exit; the default 300 s ends a finished run with an abort on slow hosts.
    timeouts = {"initialization_timeout": timeout_s, "shutdown_timeout_seconds": 3600}
    try:
        if s == AUTO:
            jax.distributed.initialize(**timeouts)
        else:
            jax.distributed.initialize(s.coordinator, s.num_processes, s.process_id, **timeouts)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if s == AUTO:
            raise UserError(
                f"cannot join a multi-process run from the environment ({first[:160]}): run "
                "under SLURM, Open MPI or on a TPU slice, or pass --coordinator, --num_processes "
                "and --process_id (--distributed=off for one process)"
            ) from None
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
