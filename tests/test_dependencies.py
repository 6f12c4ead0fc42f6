"""Honest dependencies: every package jldm, its tests and bench import is declared in
pyproject.toml (the core list or an extra) and every core entry is used; `pip install jldm`
without extras trains and samples the digits config with the [sd] extra's packages
(transformers, tokenizers, safetensors) and the test-only ones unimportable, and a feature that
needs the [sd] extra says so in one line."""

import ast
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

from tests.tiny import ROOT

NOT_INSTALLED = ("transformers", "tokenizers", "safetensors", "torch", "diffusers", "wandb")

_SCRIPT = """
import importlib.abc, json, os, sys

NOT_INSTALLED = set(sys.argv[3].split(","))


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_INSTALLED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NotInstalled())
import jldm
from jldm.errors import MissingExtra
from tests.tiny import tiny_config

data_dir, workdir = sys.argv[1:3]
few = {"train.steps": 2, "train.checkpoint_every": 2, "train.log_every": 2,
       "train.warmup_steps": 1, "model.channel_mult": (1,)}
done = jldm.train(tiny_config(data_dir, **few), workdir)
images = jldm.generate(jldm.load(workdir), labels=[1, 7], steps=2, sampler="ddim")
report = {"trained": done, "shape": list(images.shape),
          "in_range": bool(0 <= images.min() and images.max() <= 1),
          "imported": sorted({m.partition(".")[0] for m in sys.modules} & NOT_INSTALLED),
          "errors": []}
text = tiny_config(data_dir, **few, **{"model.conditioning": "text"})
weights = os.path.join(workdir, "inception.safetensors")
open(weights, "wb").close()
from jldm.convert.inception import read_state_dict
for attempt in (lambda: jldm.train(text, workdir + "-text"), lambda: read_state_dict(weights)):
    try:
        attempt()
    except MissingExtra as e:
        report["errors"].append(str(e))
report["text_workdir"] = os.path.exists(workdir + "-text")
print(json.dumps(report))
"""


def test_the_digits_config_trains_and_samples_without_the_extras(tmp_path):
    args = [str(tmp_path / "tfds"), str(tmp_path / "run"), ",".join(NOT_INSTALLED)]
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["trained"] and report["shape"] == [2, 8, 8, 1] and report["in_range"]
    assert report["imported"] == []
    assert report["errors"] == [
        "text conditioning needs tokenizers, which is not installed: pip install 'jldm[sd]'",
        "reading .safetensors weights needs safetensors, which is not installed: "
        "pip install 'jldm[sd]'",
    ]
    assert not report["text_workdir"]  # refused before anything was written
    records = [json.loads(s) for s in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2]


# Core entries jldm does not import itself, and why they are declared.
NOT_IMPORTED = {
    "importlib-resources": "tensorflow-datasets imports it on any Python, declaring it for < 3.9",
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _imports(folder: pathlib.Path) -> set[str]:
    """Top-level module names imported anywhere in folder's .py files (function bodies too)."""
    out = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.partition(".")[0])
    return out - set(sys.stdlib_module_names)


def test_every_imported_package_is_declared_and_every_core_one_is_used():
    project = tomllib.loads((pathlib.Path(ROOT) / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    owners = {
        m: {_name(d) for d in ds} for m, ds in importlib.metadata.packages_distributions().items()
    }
    root = pathlib.Path(ROOT)
    local = {p.stem for p in root.glob("*.py")} | {p.stem for p in root.glob("*/*.py")}
    local |= {p.name for p in root.iterdir() if p.is_dir()}

    def undeclared(modules: set[str], declared: set[str]) -> dict:
        return {
            m: sorted(owners.get(m, {"(no installed distribution)"}))
            for m in sorted(modules - local)
            if not owners.get(m, set()) & declared
        }

    used = _imports(root / "jldm")
    assert undeclared(used, core | extras["sd"] | extras["wandb"]) == {}
    assert undeclared(used - {"transformers", "tokenizers", "safetensors", "wandb"}, core) == {}
    assert extras["sd"] == {"transformers", "tokenizers", "safetensors"} and not extras["sd"] & core
    unused = core - {d for m in used for d in owners.get(m, ())} - set(NOT_IMPORTED)
    assert unused == set()
    everything = core | set().union(*extras.values())
    for folder in ("tests", "bench"):
        assert undeclared(_imports(root / folder), everything) == {}, folder
    assert extras["test"] >= {"jldm", "torch", "scipy"}  # jldm[sd,wandb]: the suite runs whole
