"""Tests run on CPU with 4 virtual devices, so sharded code runs on a real (virtual) mesh."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = f"{_flags} --xla_force_host_platform_device_count=4"
# The tests' programs are tiny and most are compiled once: LLVM's optimisations cost more
# (2-3x the compile time of a small UNet) than they save.
if "xla_backend_optimization_level" not in _flags:
    _flags = f"{_flags} --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

# Runs in one session (and the CLIs they start) compile the same tiny programs: share them.
_cache = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "xla")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(_cache))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
