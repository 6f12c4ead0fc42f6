"""The PyTorch FID Inception checkpoint (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or
any torchvision-named Inception3 state dict) as FIDInceptionV3 variables, read without torch.

    python -m jldm.convert.inception pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors

writes the tensors under their PyTorch names as safetensors (the classifier head dropped), a
file jldm.eval.fid loads directly; .pth files load too, just more slowly.
"""

import functools
import os
import re
import sys
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jldm.convert.folder import safetensors_module, unreadable
from jldm.convert.mapping import convert_state_dict
from jldm.convert.torch_pickle import load_torch_file
from jldm.errors import UserError
from jldm.nn.inception import FIDInceptionV3

# The classifier and auxiliary head are not part of the FID network; BatchNorm counters are not
# parameters.
_NOT_FEATURES = (r"^fc\.", r"^AuxLogits\.", r"num_batches_tracked$")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """PyTorch-named tensors from a .pth/.pt (torch.save), .safetensors or .npz file."""
    if not os.path.isfile(path):
        raise UserError(
            f"Inception weights {path} not found: pass --weights with the pytorch-fid checkpoint "
            "(pt_inception-2015-12-05-6726825d.pth) or its safetensors conversion"
        )
    if path.endswith(".safetensors"):
        st = safetensors_module()
        try:
            return st.numpy.load_file(path)
        except st.SafetensorError:
            raise unreadable(path, "convert the .pth again") from None
    if path.endswith(".npz"):
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} cannot be read as .npz ({e}): write it again") from None
    state = load_torch_file(path)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}


def abstract_variables(model: FIDInceptionV3 | None = None) -> dict:
    """Shapes of the network's params and batch_stats (nothing allocated)."""
    return _default_shapes() if model is None else _shapes_of(model)


def _shapes_of(model: FIDInceptionV3) -> dict:
    x = jnp.zeros((1, 75, 75, 3))
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))


@functools.cache
def _default_shapes() -> dict:
    """The FID network's shapes, traced once per process (seconds of tracing each time)."""
    return _shapes_of(FIDInceptionV3())


def convert_inception(state: Mapping[str, np.ndarray], source: str = "inception") -> dict:
    """torchvision-named Inception3 tensors -> {"params", "batch_stats"} of FIDInceptionV3."""
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    shapes = abstract_variables()
    stats = (r"running_(mean|var)$",)
    params = convert_state_dict(
        state, shapes["params"], "inception", source, ignore=_NOT_FEATURES + stats
    )
    batch_stats = convert_state_dict(
        state,
        shapes["batch_stats"],
        "inception",
        source,
        ignore=_NOT_FEATURES + (r"\.(weight|bias)$",),
    )
    return {"params": params, "batch_stats": batch_stats}


def load_inception(path: str) -> tuple[FIDInceptionV3, dict]:
    """(FIDInceptionV3(), variables) from a weights file (see read_state_dict)."""
    return FIDInceptionV3(), convert_inception(read_state_dict(path), path)


def export_safetensors(src: str, dst: str) -> None:
    """Convert a .pth FID Inception checkpoint to a safetensors file of its feature tensors."""
    state = read_state_dict(src)
    convert_inception(state, src)  # refuse files that do not describe the network
    keep = {k: np.ascontiguousarray(v) for k, v in state.items()}
    keep = {k: v for k, v in keep.items() if not any(re.search(p, k) for p in _NOT_FEATURES)}
    safetensors_module().numpy.save_file(keep, dst)


def main(argv: list[str]) -> None:
    """python -m jldm.convert.inception IN.pth OUT.safetensors"""
    from jldm.cli import fail

    if len(argv) != 2 or not argv[1].endswith(".safetensors"):
        fail("usage: python -m jldm.convert.inception IN.pth OUT.safetensors")
    if os.path.exists(argv[1]):
        fail(f"{argv[1]} exists: pick a new output path")
    try:
        export_safetensors(argv[0], argv[1])
    except UserError as e:
        fail(str(e))
    print(f"wrote {argv[1]}")


if __name__ == "__main__":
    main(sys.argv[1:])
