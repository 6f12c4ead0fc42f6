"""jldm.host: CPU device counts and the allocator setting of processes that run XLA:CPU."""

import subprocess
import sys
import textwrap

import pytest


def test_cpu_hosts_get_one_device_per_core_that_divides_the_batch():
    from jldm.errors import UserError
    from jldm.host import cpu_device_flags

    flag = "--xla_force_host_platform_device_count"
    assert cpu_device_flags({}, 2, 128) == f"{flag}=2"
    assert cpu_device_flags({}, 8, 96) == f"{flag}=8"
    assert cpu_device_flags({}, 8, 100) == f"{flag}=5"  # the batch splits evenly
    assert cpu_device_flags({}, 3, 7) == f"{flag}=1"
    other = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert cpu_device_flags(other, 2, 64) == f"--xla_cpu_enable_fast_math=false {flag}=2"
    # A count the user set, or JLDM_CPU_DEVICES, decides.
    assert cpu_device_flags({"XLA_FLAGS": f"{flag}=4"}, 2, 64) is None
    assert cpu_device_flags({"JLDM_CPU_DEVICES": "1"}, 16, 64) == f"{flag}=1"
    with pytest.raises(UserError, match="JLDM_CPU_DEVICES"):
        cpu_device_flags({"JLDM_CPU_DEVICES": "all"}, 2, 64)


# Faults while allocating, touching and freeing a 64 MB block eight times, after a first round
# that brings it into the process; printed as one number by a fresh interpreter.
_FAULTS = textwrap.dedent(
    """
    import ctypes, resource, sys
    from jldm.host import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20

    def cycle():
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        cycle()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    """By default glibc returns a 64 MB block to the system on free, so each new one faults
    in all its pages again (16,384 of 4 KiB per round, fewer with huge pages); kept, the
    block is reused with none."""

    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout.strip())

    default, kept = faults("default"), faults("keep")
    assert default >= 8 * 16, default  # at least one fault per 2 MB huge page per round
    assert kept < 100, kept
