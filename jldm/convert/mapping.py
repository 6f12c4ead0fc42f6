"""Map a PyTorch state dict (numpy arrays) onto a Flax parameter tree by name and shape.

Our modules are named like their PyTorch counterparts, with `_i` where PyTorch has `.i` for a
list index (`down_blocks_0/resnets_1` <-> `down_blocks.0.resnets.1`). The expected PyTorch key of
every Flax leaf is derived from the Flax tree itself, so every tensor is accounted for: a missing,
unexpected or mis-shaped tensor is a one-line UserError naming it.
"""

import re
from collections.abc import Iterable, Mapping

import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from jldm.errors import UserError

# Flax module names that stand for an index into a PyTorch ModuleList / Sequential.
LIST_NAMES = frozenset(
    {
        "down_blocks",
        "up_blocks",
        "resnets",
        "attentions",
        "downsamplers",
        "upsamplers",
        "transformer_blocks",
        "to_out",
        "layers",
    }
)
_LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "embedding": "weight",
    "bias": "bias",
    "mean": "running_mean",  # BatchNorm statistics (Flax's batch_stats collection)
    "var": "running_var",
}
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def torch_key(path: tuple[str, ...], renames: Iterable[tuple[str, str]] = ()) -> str:
    """The PyTorch state-dict key of a Flax leaf path, e.g. (..., "conv1", "kernel")."""
    parts = []
    for p in path[:-1]:
        m = _INDEXED.match(p)
        parts.append(f"{m.group(1)}.{m.group(2)}" if m and m.group(1) in LIST_NAMES else p)
    module = "." + ".".join(parts) + "."
    for ours, theirs in renames:
        module = module.replace(f".{ours}.", f".{theirs}.")
    return module[1:] + _LEAF_TO_TORCH[path[-1]]


def _to_flax(leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """PyTorch layout -> Flax layout for one tensor (returned unchanged when no rule applies)."""
    if leaf != "kernel":
        return value
    if value.ndim == 4 and len(shape) == 2 and value.shape[2:] == (1, 1):
        value = value[:, :, 0, 0]  # a 1x1 conv stored for what is now a linear layer
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
    if value.ndim == 2:
        return value.T  # Linear [O, I] -> Dense [I, O]
    return value


def _more(n: int) -> str:
    return f" (and {n} more)" if n else ""


def convert_state_dict(
    tensors: Mapping[str, np.ndarray],
    abstract: Mapping,
    component: str,
    source: str,
    renames: Iterable[tuple[str, str]] = (),
    ignore: Iterable[str] = (),
) -> dict:
    """Fill the Flax tree `abstract` (shapes only) from PyTorch-named `tensors`. -> params tree.

    component names the model in errors ("unet", "vae", ...), source the file the tensors came
    from; renames are (our dotted module name, PyTorch's) pairs; ignore lists regexes of
    PyTorch keys that carry no parameters (buffers such as position_ids).
    """
    renames = tuple(renames)
    ignored = [re.compile(p) for p in ignore]
    flat = traverse_util.flatten_dict(unfreeze(abstract))
    expected = {torch_key(path, renames): path for path in flat}
    unused = [k for k in tensors if k not in expected and not any(p.search(k) for p in ignored)]
    if unused:
        raise UserError(
            f"{component}: unexpected tensor {unused[0]}{_more(len(unused) - 1)} in {source}: "
            f"{component}/config.json describes no such layer; the folder's config and weights "
            "disagree, or it uses an architecture option jldm does not convert"
        )
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise UserError(
            f"{component}: tensor {missing[0]}{_more(len(missing) - 1)} is missing from {source}: "
            f"the weights do not match {component}/config.json; re-save the folder with diffusers"
        )
    out = {}
    for key, path in expected.items():
        shape = tuple(flat[path].shape)
        value = _to_flax(path[-1], np.asarray(tensors[key]), shape)
        if tuple(value.shape) != shape:
            raise UserError(
                f"{component}: tensor {key} in {source} has shape {tuple(tensors[key].shape)}, "
                f"but {component}/config.json implies {shape} (Flax layout): the config and the "
                "weights come from different models"
            )
        out[path] = np.ascontiguousarray(value, dtype=np.float32)
    return traverse_util.unflatten_dict(out)


def rename_keys(
    tensors: Mapping[str, np.ndarray], rules: Iterable[tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Apply regex (pattern, replacement) rules to every key, e.g. legacy attention names."""
    rules = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in tensors.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out
