"""jldm is a library: importing it defines no absl flag and prints nothing, so a researcher's
own absl program, with flags of its own, can call jldm.train."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports jldm and every module under it (the command lines of jldm.scripts aside) and writes
# each flag that appeared on absl's global FLAGS, with the module that defined it, to argv[1].
_IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
from absl import app, flags, logging  # absl's own flags are the baseline

before = set(flags.FLAGS)
import jldm

modules = []
for info in pkgutil.walk_packages(jldm.__path__, "jldm."):
    name = info.name
    if name.startswith("jldm.scripts.") or name.split(".")[-1] == "__main__":
        continue
    importlib.import_module(name)
    modules.append(name)
new = sorted(set(flags.FLAGS) - before)
owners = {n: flags.FLAGS.find_module_defining_flag(n) for n in new}
with open(sys.argv[1], "w") as f:
    json.dump({"modules": modules, "owners": owners, "all": sorted(flags.FLAGS)}, f)
"""


def _env() -> dict:
    # conftest's XLA_FLAGS (4 CPU devices) and caches travel along.
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _python(args: list[str], cwd, timeout: int) -> subprocess.CompletedProcess:
    """A fresh Python on args, its output captured."""
    run = dict(capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout)
    return subprocess.run([sys.executable, *args], **run)


def test_importing_every_module_defines_no_flag_and_prints_nothing(tmp_path):
    report = tmp_path / "flags.json"
    done = _python(["-c", _IMPORT_EVERYTHING, str(report)], tmp_path, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    seen = json.loads(report.read_text())
    assert {"jldm.api", "jldm.compare", "jldm.eval.fid", "jldm.train.diffusion"} <= set(
        seen["modules"]
    )
    # Dependencies (grain, Orbax, TFDS) define a few flags of their own on import; jldm none.
    ours = {n: m for n, m in seen["owners"].items() if m is None or m.split(".")[0] == "jldm"}
    assert ours == {}
    # The names a researcher's program is likely to define, which jldm's commands take.
    common = {"batch_size", "seed", "out", "weights", "data_dir", "nfe", "workdir", "config"}
    assert common & set(seen["all"]) == set()


_ABSL_PROGRAM = """
import sys

sys.path.insert(0, {root!r})

from absl import app, flags

import jldm
from tests.tiny import tiny_config

flags.DEFINE_integer("batch_size", 8, "The researcher's batch size.")
flags.DEFINE_integer("seed", 0, "The researcher's seed.")
flags.DEFINE_string("data_dir", None, "Where datasets live.")
flags.DEFINE_string("workdir", None, "Run folder.")
FLAGS = flags.FLAGS


def main(argv):
    config = tiny_config(FLAGS.data_dir, **{{"train.batch_size": FLAGS.batch_size}})
    config.seed = FLAGS.seed
    assert jldm.train(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
"""


def test_an_absl_program_with_its_own_flags_calls_jldm_train(tmp_path):
    program = tmp_path / "research.py"
    program.write_text(_ABSL_PROGRAM.format(root=ROOT))
    workdir = tmp_path / "run"
    # 8: the tiny config's own batch, so the train step other tests compiled serves here too.
    argv = [str(program), "--batch_size=8", "--seed=3", f"--data_dir={tmp_path / 'tfds'}"]
    done = _python([*argv, f"--workdir={workdir}"], tmp_path, 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4" in os.listdir(workdir / "checkpoints")  # tiny_config's train.steps
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["batch_size"] == 8 and config["seed"] == 3
