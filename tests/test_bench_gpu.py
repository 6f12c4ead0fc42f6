"""bench/gpu.py, the one command for the GPU figures, run on the CPU with --tiny shapes.

One case of each bench script runs for real (sampling.py, unet.py with train and eval, and
vs_diffusers.py with the diffusers peer); the flags of every case, in both modes, are checked
against the scripts and configs without running them.
"""

import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from ml_collections.config_flags import config_path

from tests.tiny import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_cases  # noqa: E402
import timing  # noqa: E402

RUN = ["digits_ddpm1000", "sd15_jldm", "sd15_eval_vs_diffusers"]
TARGETS = {
    "digits_ddpm1000_500_s": ("<=", 1.4),
    "sd15_train_images_per_s": (">=", 165.0),
    "sd15_eval_images_per_s": (">=", 600.0),
    "sd15_train_peak_gb": ("<", 38.0),
}


def _gpu_py(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.join("bench", "gpu.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench_gpu.json"
    got = _gpu_py("--tiny", "--out", str(out), "--cases", ",".join(RUN))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "| sd15_train_peak_gb |" in got.stdout  # the summary table
    return json.loads(out.read_text())


def test_the_file_describes_the_run_the_device_and_the_versions(report):
    assert report["bench"] == "gpu" and report["tiny"] is True
    assert report["device"]["platform"] == "cpu" and report["device"]["device_count"] == 1
    assert report["versions"]["jax"] and report["versions"]["python"]
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    assert report["wall_s"] > 0 and report["started"].endswith("+00:00")
    assert list(report["cases"]) == RUN
    for case in report["cases"].values():
        assert case["status"] == "ok" and case["error"] is None and case["returncode"] == 0
        assert case["records"] and 0 < case["wall_s"] <= case["limit_s"]


def test_every_figure_is_a_positive_number_read_from_its_record(report):
    figures = report["figures"]
    assert set(figures) == {f[0] for case in RUN for f in gpu_cases.FIGURES[case]}
    for name, f in figures.items():
        assert isinstance(f["value"], float) and math.isfinite(f["value"]) and f["value"] > 0, name
    records = {name: case["records"] for name, case in report["cases"].items()}
    train = next(r for r in records["sd15_jldm"] if r["case"] == "train")
    assert figures["sd15_train_images_per_s"]["value"] == train["images_per_s"]
    # The CPU reports no allocator peak: the figure is XLA's plan of the program, in GB.
    plan = train["xla_argument_bytes"] + train["xla_output_bytes"] + train["xla_temp_bytes"]
    peak = figures["sd15_train_peak_gb"]
    assert peak["source"] == "xla_plan_bytes" and peak["unit"] == "GB"
    assert peak["value"] == pytest.approx((plan - train["xla_alias_bytes"]) / 1e9)
    (vs,) = records["sd15_eval_vs_diffusers"]
    ratio = vs["peer"]["median_s"] / vs["jldm"]["median_s"]
    assert figures["sd15_vs_eval_speedup"]["value"] == pytest.approx(ratio, rel=0.01)


def test_the_targets_are_recorded_and_judged(report):
    figures = report["figures"]
    for name, f in figures.items():
        if name in TARGETS:
            op, value = TARGETS[name]
            assert f["target"] == {"op": op, "value": value}
            assert f["met"] is gpu_cases.OPS[op](f["value"], value)
        else:
            assert f["target"] is None and f["met"] is None
    met = [figures[n]["met"] for n in TARGETS]
    assert report["targets"] == {
        "met": met.count(True),
        "missed": met.count(False),
        "unmeasured": 0,
    }


def test_a_case_over_its_time_limit_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "bench_gpu.json"
    two = "digits_ddpm1000,cifar10_train"
    got = _gpu_py("--tiny", "--out", str(out), "--cases", two, "--timeout_s", "0.5")
    assert got.returncode == 1, got.stdout + got.stderr
    report = json.loads(out.read_text())
    for case in report["cases"].values():
        assert case["status"] == "timeout" and case["records"] == []
    assert report["figures"]["digits_ddpm1000_500_s"]["met"] is None
    assert report["targets"] == {"met": 0, "missed": 0, "unmeasured": 1}


def test_usage_errors_end_with_one_line_and_leave_the_file_alone(tmp_path):
    out = tmp_path / "bench_gpu.json"
    out.write_text("earlier figures")
    got = _gpu_py("--tiny", "--out", str(out), "--cases", "sd15_jldm,nonsense")
    assert got.returncode == 2 and "nonsense" in got.stdout
    got = _gpu_py("--out", str(out), "--cases", "digits_ddpm1000")  # full mode, no GPU here
    assert got.returncode == 2 and "no GPU" in got.stdout and "--tiny" in got.stdout
    assert out.read_text() == "earlier figures"


@pytest.mark.parametrize("tiny", [True, False])
def test_every_case_passes_flags_its_script_defines_and_keys_its_config_has(tiny):
    args = SimpleNamespace(tiny=tiny, timeout_s=100.0, peak_tflops=989.0, jax_share=0.5)
    cases = gpu_cases.cases(args)
    assert [c.name for c in cases] == list(gpu_cases.FIGURES)
    for case in cases:
        source = open(os.path.join(ROOT, "bench", case.script)).read()
        (config,) = [a.split("=", 1)[1] for a in case.args if a.startswith("--config=")]
        values = timing.load_config_file(os.path.join(ROOT, config))
        for arg in case.args:
            if arg.startswith("--config."):
                config_path.get_value(arg[len("--config.") :].split("=")[0], values)
            elif arg.startswith("--"):
                name = arg[2:].split("=")[0]
                assert re.search(rf'DEFINE_\w+\(\s*"{name}"', source), (case.name, name)
        wanted = {f[1] for f in gpu_cases.FIGURES[case.name]}
        script_cases = case.args[case.args.index("--cases") + 1].split(",")
        assert wanted == {
            ("sample_" if case.script == "sampling.py" else "") + c for c in script_cases
        }
