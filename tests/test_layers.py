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
    ["jldm.errors", "jldm.cache", "jldm.configs", "jldm.temporaries"],
    ["jldm.cli", "jldm.host"],
    ["jldm.nn", "jldm.diffusion"],
    ["jldm.data", "jldm.convert"],
    ["jldm.eval"],
    # The run kinds: read by build, so below it; it imports nothing of jldm.
    ["jldm.runs.kinds"],
    ["jldm.build"],
    # A run on disk, below both users of it: reading a run back imports no training code.
    ["jldm.runs"],
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


def _main_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`, which runs only when the module is a program, never on
    import (python -m jldm.compare calls the command in jldm.scripts from there)."""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and [type(op) for op in test.ops] == [ast.Eq]
        and [type(c) for c in test.comparators] == [ast.Constant]
        and test.comparators[0].value == "__main__"
    )


def imports(source: str, module: str) -> list[str]:
    """The jldm modules a source file imports (function-level imports included; not those of
    its `if __name__ == "__main__":` block)."""
    found = []
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if not _main_block(node)]
    for node in ast.walk(tree):
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
        ("jldm.runs.load", "from jldm.train import fit"),
        ("jldm.runs.load", "def f():\n    from jldm.sampling.run import conditions\n"),
        ("jldm.runs.checkpoint", "from jldm import api"),
        ("jldm.build.model", "from jldm.runs.load import load_run"),
        ("jldm.nn.unet", "from jldm.runs.kinds import kind_of"),
        ("jldm.diffusion.solvers", "from jldm.runs import checkpoint"),
        ("jldm.runs.kinds", "from jldm.runs import workdir"),
        ("jldm.eval.fid", "if __name__ != '__main__':\n    from jldm.scripts.fid import run\n"),
    ],
)
def test_an_upward_or_sideways_import_is_caught(module, source):
    assert violations(source, module) != []


def test_downward_imports_pass():
    assert violations("from jldm.build import objectives", "jldm.train.fit") == []
    assert violations("from jldm.train.fit import fit", "jldm.train.toy") == []
    assert violations("from jldm.api import load", "jldm") == []
    # A module run as a program may hand over to its command.
    entry = 'if __name__ == "__main__":\n    from jldm.scripts.fid import run\n\n    run()\n'
    assert violations(entry, "jldm.eval.fid") == []
    assert violations("from jldm.runs.kinds import kind_of", "jldm.build.model") == []
    assert violations("from jldm.runs import checkpoint", "jldm.train.fit") == []
    assert violations("from jldm.runs.load import Loaded", "jldm.sampling.run") == []
    assert violations("from jldm.runs.kinds import kind_of", "jldm.runs.load") == []


# Modules that read a run back, sample, or compare runs: none imports the training code (its
# data pipeline, optimizer, task machinery). jldm.api's train() is the one lazy exception.
_READERS = ("jldm.sampling", "jldm.api", "jldm.compare", "jldm.scripts.sample")
_LAZY_TRAIN = {("jldm.api", "train")}


def train_imports(source: str, module: str) -> list[str]:
    """'module -> jldm.train...' for each import of the training code, but the allowed lazy ones."""
    out = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name if function is None else function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in imports(ast.unparse(child), module):
                    train = target == "jldm.train" or target.startswith("jldm.train.")
                    if train and (module, function) not in _LAZY_TRAIN:
                        out.append(f"{module} -> {target}")
            visit(child, function)

    visit(ast.parse(source), None)
    return out


def _is_reader(module: str) -> bool:
    # The compare script may become several modules (jldm.scripts.compare, ..._grid).
    names = (*_READERS, "jldm.scripts.compare")
    return any(module == n or module.startswith(n + ".") or module.startswith(n + "_")
               for n in names)  # fmt: skip


def test_reading_sampling_and_comparing_never_import_the_training_code():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if _is_reader(module):
            bad += train_imports(path.read_text(), module)
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    "module, source",
    [
        ("jldm.api", "from jldm.train.entry import train"),
        ("jldm.api", "def load():\n    from jldm.train import fit\n"),
        ("jldm.compare", "def row():\n    from jldm.train.ldm import stage1_folder\n"),
        ("jldm.scripts.sample", "def main():\n    import jldm.train.entry\n"),
        ("jldm.sampling.pipeline", "from jldm import train"),
    ],
)
def test_a_reader_importing_the_training_code_is_caught(module, source):
    assert train_imports(source, module) != []


def test_the_api_train_entry_may_import_training_lazily():
    source = "def train(config, workdir):\n    from jldm.train.entry import train\n"
    assert train_imports(source, "jldm.api") == []
    assert _is_reader("jldm.scripts.compare_grid") and not _is_reader("jldm.scripts.train")


# Reading a run back and sampling need no dataset stack: a notebook or a bare accelerator image
# imports jldm with neither TensorFlow Datasets nor grain installed, and loads no training code.
_WITHOUT_DATASETS = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "grain", "array_record"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
import jldm, jldm.api, jldm.runs.load, jldm.sampling.pipeline
from jldm.data import paths
print(sorted(m for m in ("tensorflow_datasets", "grain") if m in sys.modules), jldm.load.__name__)
print(sorted(m for m in sys.modules if m.split(".")[:2] == ["jldm", "train"]))
"""


def test_jldm_imports_without_the_dataset_stack():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DATASETS], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "load", "[]"]
