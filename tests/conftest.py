"""Tests run on CPU with 4 virtual devices, so sharded code runs on a real (virtual) mesh.

Everything the tests cache goes to one temporary folder per test session, never the user's
home: the quality classifiers (JLDM_CACHE_DIR) and compiled programs (JAX's persistent cache).
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = f"{_flags} --xla_force_host_platform_device_count=4"
# The tests' programs are tiny and most are compiled once: LLVM's optimisations cost more
# (2-3x the compile time of a small UNet) than they save.
if "xla_backend_optimization_level" not in _flags:
    _flags = f"{_flags} --xla_backend_optimization_level=0"
# XLA:CPU's older loop emitters compile the tests' train steps in about half the time of its
# MLIR fusion emitters (13-15 s against 30-40 s for the tiny UNet's step on this machine).
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags = f"{_flags} --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()

# The session's folder travels in the environment: pytest-xdist workers inherit the
# controller's and reuse it, and so do the CLIs the tests start, which then get the session's
# compiled programs and classifiers instead of rebuilding them.
_SESSION = "JLDM_TEST_SESSION_DIR"
if not (os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_SESSION)):
    os.environ[_SESSION] = tempfile.mkdtemp(prefix="jldm-tests-")
SESSION_DIR = os.environ[_SESSION]
# Set, not defaulted: a cache the user pointed elsewhere (their home) stays out of the tests.
os.environ["JLDM_CACHE_DIR"] = os.path.join(SESSION_DIR, "cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(SESSION_DIR, "xla")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
    # The process that made the folder removes it: the controller, or pytest without workers.
    if not hasattr(config, "workerinput"):
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


# The files with the most test time on two cores (seconds, pytest --durations), run first: under
# pytest-xdist (make test: --dist loadfile --no-loadscope-reorder) the last files to finish are
# then short ones, not a long one on one worker while the others idle. make test runs three
# workers on two cores: the third fills the time the others wait on subprocesses and polls.
_LONGEST = {
    "test_fit.py": 167,
    "test_objectives.py": 106,
    "test_ldm.py": 91,
    "test_reliability.py": 90,
    "test_convert.py": 46,
    "test_cifar10.py": 39,
    "test_results_kept.py": 39,
    "test_bench_gpu.py": 35,
    "test_cli.py": 34,
    "test_library.py": 32,
    "test_unet.py": 28,
    "test_fid.py": 27,
    "test_speed_options.py": 26,
    "test_train.py": 24,
    "test_bf16_training.py": 21,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_LONGEST.get(item.path.name, 0))  # stable: the rest as collected
