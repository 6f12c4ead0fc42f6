"""Reading a diffusers-format folder: each component's config.json and safetensors weights.

Weights are read as numpy arrays (never torch). bfloat16 tensors, which numpy cannot name, are
widened to float32 from their raw bytes.
"""

import json
import os
import re
from collections.abc import Mapping

import numpy as np

from jldm.errors import UserError, missing_extra

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Variant files (`diffusion_pytorch_model.fp16.safetensors`) sit beside the full-precision ones.
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|ema|non_ema)(-\d+-of-\d+)?\.safetensors$")


def component_dir(root: str, name: str) -> str:
    """DIR/name, or a UserError saying the folder is not a diffusers pipeline folder."""
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        raise UserError(
            f"{root} has no {name}/ folder: --pretrained needs a diffusers pipeline folder "
            f"with {', '.join(c + '/' for c in COMPONENTS)}"
        )
    return path


def read_config(root: str, name: str, filename: str = "config.json") -> dict:
    """DIR/name/config.json as a dict (scheduler: scheduler_config.json)."""
    path = os.path.join(component_dir(root, name), filename)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: save the {name} with diffusers' save_pretrained")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e}): re-save the {name}") from None


def weight_files(root: str, name: str) -> list[str]:
    """The safetensors files of a component, full precision preferred over variants."""
    folder = component_dir(root, name)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    plain = [f for f in files if not _VARIANT.search(f)]
    chosen = plain or files
    if not chosen:
        other = [f for f in os.listdir(folder) if f.endswith((".bin", ".ckpt", ".pt", ".pth"))]
        hint = (
            f"only {other[0]} (a pickle) is there: re-save it with safe_serialization=True"
            if other
            else "save it with diffusers' save_pretrained"
        )
        raise UserError(f"no .safetensors weights in {folder}: {hint}")
    if not plain:
        variants = {_VARIANT.search(f).group(1) for f in files}
        if len(variants) > 1:
            raise UserError(
                f"{folder} holds several weight variants {sorted(variants)} and no plain "
                "file: keep one variant"
            )
    return [os.path.join(folder, f) for f in chosen]


def _bf16_as_f32(path: str, name: str) -> np.ndarray:
    """Widen one bfloat16 tensor to float32 from the file's raw bytes (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        info = header[name]
        begin, end = info["data_offsets"]
        f.seek(8 + header_len + begin)
        raw = np.frombuffer(f.read(end - begin), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def safetensors_module():
    """The safetensors package, imported on first use (it comes with jldm's [sd] extra), or the
    one-line error naming that extra."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise missing_extra(e, "reading .safetensors weights") from e
    return safetensors


def unreadable(path: str, fix: str = "re-download it") -> UserError:
    """The one-line error for a weight file that safetensors cannot parse (cut short, empty)."""
    return UserError(f"{path}: not a readable safetensors file (truncated or empty?): {fix}")


def load_tensors(root: str, name: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a component as float32 numpy arrays, and a label naming its file(s)."""
    tensors: dict[str, np.ndarray] = {}
    files = weight_files(root, name)
    st = safetensors_module()
    for path in files:
        try:
            with st.safe_open(path, framework="np") as f:
                for key in f.keys():
                    if f.get_slice(key).get_dtype() == "BF16":
                        tensors[key] = _bf16_as_f32(path, key)
                    else:
                        tensors[key] = np.asarray(f.get_tensor(key))
        except st.SafetensorError:
            raise unreadable(path, f"re-download it or re-save the {name}") from None
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path} cannot be read ({e}): re-save the {name}") from None
    label = files[0] if len(files) == 1 else os.path.dirname(files[0])
    return tensors, label


def fingerprint(root: str) -> dict[str, list]:
    """Size and mtime of every config and weight file: a cache built from them is still valid."""
    out: dict[str, list] = {}
    for name in COMPONENTS:
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if f.endswith((".json", ".safetensors", ".txt")):
                st = os.stat(os.path.join(folder, f))
                out[f"{name}/{f}"] = [st.st_size, int(st.st_mtime_ns)]
    return out


def as_float32(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast every floating tensor to float32 (half-precision folders convert to float32 params)."""
    return {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in tensors.items()
    }
