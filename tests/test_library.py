"""jldm is a library: importing it defines no absl flag, prints nothing and sets up no logging,
so a researcher's own absl program, with flags of its own, can call jldm.train; a training run
reports through the `jldm` logger, which shows nothing until the program configures logging."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports jldm and every module under it (the command lines of jldm.scripts aside) and writes
# each flag that appeared on absl's global FLAGS, with the module that defined it, to argv[1],
# with what became of the logging setup. The root logger gets a handler of the program's own
# first: absl configures a bare root logger on a dependency's first absl log call (Orbax makes
# one on import), and with a handler there any change to the root logger is jldm's.
_IMPORT_EVERYTHING = """
import importlib, json, logging, pkgutil, sys
from absl import app, flags  # absl's own flags are the baseline
import absl.logging

mine = logging.NullHandler()
logging.root.addHandler(mine)
root_level = logging.root.level
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
loggers = [logging.getLogger("jldm")] + [
    v for k, v in logging.root.manager.loggerDict.items()
    if k.startswith("jldm.") and isinstance(v, logging.Logger)
]
logs = {
    "root_untouched": logging.root.handlers == [mine] and logging.root.level == root_level,
    "module_loggers": sorted(g.name for g in loggers if g.name != "jldm"),
    "set_up": sorted(g.name for g in loggers if g.handlers or g.level or not g.propagate),
}
with open(sys.argv[1], "w") as f:
    json.dump({"modules": modules, "owners": owners, "all": sorted(flags.FLAGS), "logs": logs}, f)
"""


def _env() -> dict:
    # conftest's XLA_FLAGS (4 CPU devices) and caches travel along.
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _python(args: list[str], cwd, timeout: int) -> subprocess.CompletedProcess:
    """A fresh Python on args, its output captured."""
    run = dict(capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout)
    return subprocess.run([sys.executable, *args], **run)


def _not_tfds(stdout: str) -> list[str]:
    """stdout's lines but the two TFDS itself prints while it prepares a fresh data_dir."""
    tfds = ("Downloading and preparing dataset", "downloaded and prepared to")
    return [s for s in stdout.splitlines() if not any(t in s for t in tfds)]


def test_importing_every_module_defines_no_flag_prints_nothing_and_sets_up_no_logging(tmp_path):
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
    # No handler, level or propagation change on the root logger, `jldm` or a module's logger.
    logs = seen["logs"]
    assert logs["root_untouched"] and logs["set_up"] == []
    assert {"jldm.train.fit", "jldm.runs.checkpoint"} <= set(logs["module_loggers"])


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
    assert _not_tfds(done.stdout) == []
    assert "4" in os.listdir(workdir / "checkpoints")  # tiny_config's train.steps
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["batch_size"] == 8 and config["seed"] == 3


_PLAIN_PROGRAM = """
import logging
import sys

sys.path.insert(0, {root!r})

import jldm
from jldm.train.fit import fit  # the training subpackage imported: jldm.train stays the function
from tests.tiny import tiny_config

data_dir, workdir = sys.argv[1:]
config = tiny_config(data_dir)
config.train.final_samples = True  # its "final samples:" line is one of those kept hidden
assert jldm.train(config, workdir)
# A notebook's way to see the progress lines (force: the root logger has a handler already).
logging.basicConfig(level=logging.INFO, force=True)
assert jldm.train(config, workdir)  # a second call in the same process
"""


def test_training_prints_nothing_until_the_program_configures_logging(tmp_path):
    program = tmp_path / "plain.py"
    program.write_text(_PLAIN_PROGRAM.format(root=ROOT))
    workdir = tmp_path / "run"
    done = _python([str(program), str(tmp_path / "tfds"), str(workdir)], tmp_path, 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _not_tfds(done.stdout) == []
    # Unconfigured, Python shows warnings only: the first run's INFO lines stay hidden.
    assert "final samples:" not in done.stderr, done.stderr[-3000:]
    # Configured, the second call's line comes through the module's logger.
    line = f"INFO:jldm.train.fit:{workdir}: already trained to step 4 (train.steps=4)"
    assert line in done.stderr.splitlines(), done.stderr[-3000:]
