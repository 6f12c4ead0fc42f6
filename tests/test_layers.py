"""Imports point one way: a module imports only from its own package or from lower layers."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jldm"

# Lowest first. Packages on one line share a layer but still may not import each other.
LAYERS = [
    ["jldm.errors", "jldm.cache", "jldm.configs"],
    ["jldm.cli", "jldm.host"],
    ["jldm.nn", "jldm.diffusion"],
    ["jldm.data", "jldm.convert"],
    ["jldm.eval"],
    ["jldm.build"],
    ["jldm.sampling"],
    ["jldm.train"],
    ["jldm.api"],
    ["jldm.compare", "jldm"],
    ["jldm.scripts"],
]


def _unit(module: str) -> str:
    """The entry of LAYERS a module belongs to (its package, or the module itself)."""
    names = [n for layer in LAYERS for n in layer]
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in names:
            return ".".join(parts[:i])
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _rank(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str) -> list[str]:
    """The jldm modules a source file imports (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "jldm"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "jldm":
                # `from jldm import api` imports jldm.api, not the package's __init__.
                found += [f"{node.module}.{a.name}" if node.module == "jldm" else node.module
                          for a in node.names]  # fmt: skip
    return found


def violations(source: str, module: str) -> list[str]:
    """'a -> b' for every import of module that points up or sideways to another package."""
    here = _unit(module)
    out = []
    for target in imports(source, module):
        there = _unit(target)
        if there == here or (here == "jldm" and there != "jldm"):
            continue
        if _rank(there) >= _rank(here):
            out.append(f"{module} -> {target}")
    return out


def test_no_module_imports_from_a_layer_above_or_beside_it():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        bad += violations(path.read_text(), _module_name(path))
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    "module, source",
    [
        ("jldm.train.fit", "from jldm import api"),
        ("jldm.train.fit", "def f():\n    import jldm.api\n"),
        ("jldm.build.model", "from jldm.train.checkpoint import restore"),
        ("jldm.nn.unet", "from jldm.diffusion import schedules"),
        ("jldm.sampling.pipeline", "from jldm.train import fit"),
    ],
)
def test_an_upward_or_sideways_import_is_caught(module, source):
    assert violations(source, module) != []


def test_downward_imports_pass():
    assert violations("from jldm.build import objectives", "jldm.train.fit") == []
    assert violations("from jldm.train.fit import fit", "jldm.train.toy") == []
    assert violations("from jldm.api import load", "jldm") == []


# Reading a run back and sampling need no dataset stack: a notebook or a bare accelerator image
# imports jldm with neither TensorFlow Datasets nor grain installed.
_WITHOUT_DATASETS = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "grain", "array_record"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
import jldm, jldm.api, jldm.train.runs, jldm.sampling.pipeline
from jldm.data import paths
print(sorted(m for m in ("tensorflow_datasets", "grain") if m in sys.modules), jldm.load.__name__)
"""


def test_jldm_imports_without_the_dataset_stack():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DATASETS], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "load"]
