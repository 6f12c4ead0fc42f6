"""The process around XLA:CPU: how many CPU devices it gets, and how it allocates memory.

train.py (when it owns its process) and bench/vs_diffusers.py set both before the work starts;
neither changes results. The device count applies to the CPU platform only, and train.py
changes the allocator only when JAX's backend is the CPU.
"""

import ctypes
import os
import sys

from jldm.errors import UserError

CPU_DEVICES_ENV = "JLDM_CPU_DEVICES"
_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_flags(environ: dict, cores: int, batch_size: int) -> str | None:
    """XLA_FLAGS giving the host platform one device per core, or None to leave them.

    XLA:CPU runs one program on about one core for models of this size; one device per core,
    data parallel over the mesh, uses them all. The count is the largest divisor of
    batch_size up to cores (the batch is split evenly), $JLDM_CPU_DEVICES when set (1: one
    device), and nothing when XLA_FLAGS already set a count. GPUs and TPUs are unaffected.
    """
    current = environ.get("XLA_FLAGS", "")
    if _COUNT_FLAG in current:
        return None
    wanted = environ.get(CPU_DEVICES_ENV)
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise UserError(f"{CPU_DEVICES_ENV}={wanted!r} must be a number of devices >= 1")
        count = int(wanted)
    else:
        count = max(d for d in range(1, max(cores, 1) + 1) if batch_size % d == 0)
    return f"{current} {_COUNT_FLAG}={count}".strip()


def use_every_core(batch_size: int) -> None:
    """Set cpu_device_flags in this process's environment, before any JAX backend starts."""
    flags_now = cpu_device_flags(dict(os.environ), len(os.sched_getaffinity(0)), batch_size)
    if flags_now is not None:
        os.environ["XLA_FLAGS"] = flags_now


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for the next allocation.

    XLA:CPU allocates each execution's temporary buffer (tens of MB for a train step) and frees
    it afterwards. By default glibc serves such blocks with mmap and returns them with munmap,
    so every step faults in and zeroes fresh pages: on two cores, about a fifth of the train
    step's CPU time went to the kernel's page-fault path. With mmap off and a 2 GB trim
    threshold, freed blocks stay in the heap and the next step reuses them. Peak memory is
    unchanged; the process does not give freed memory back to the system while it runs.

    -> True when applied (Linux with glibc), False elsewhere (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (absent on musl and other C libraries)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
