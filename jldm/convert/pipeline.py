"""Load a diffusers Stable Diffusion folder: configs -> our modules, weights -> Flax params,
converted once and kept as an Orbax checkpoint in the user's cache folder for fast later loads
(the model folder itself is only read: it may be read-only or a shared download cache)."""

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jldm.cache import cache_root
from jldm.convert.folder import component_dir, fingerprint, load_tensors, read_config
from jldm.convert.models import (
    UNetSpec,
    VAESpec,
    convert_text_encoder,
    convert_unet,
    convert_vae,
    text_encoder_from_config,
    unet_from_config,
    vae_from_config,
)
from jldm.convert.scheduler import SchedulerSpec, scheduler_from_config
from jldm.errors import UserError
from jldm.nn import autoencoder, layers, text_encoder
from jldm.nn import unet as unet_module
from jldm.nn.layers import Dtype
from jldm.nn.text_encoder import CLIPTextEncoder
from jldm.temporaries import temporary

logger = logging.getLogger(__name__)

_MARKER = "jldm-cache.json"
# Bump when the converted layout changes, so older caches are rebuilt instead of misread.
_FORMAT = 1


class Pretrained(NamedTuple):
    """A Stable Diffusion pipeline in jldm's terms; params: {unet, vae, text_encoder}."""

    root: str
    unet: UNetSpec
    vae: VAESpec
    text_encoder: CLIPTextEncoder
    scheduler: SchedulerSpec
    params: dict
    load_seconds: float
    source: str  # "converted" or "cache"


def build_specs(root: str, dtype: Dtype = jnp.float32):
    """(UNetSpec, VAESpec, CLIPTextEncoder, SchedulerSpec) from the folder's config files."""
    unet = unet_from_config(read_config(root, "unet"), dtype)
    vae = vae_from_config(read_config(root, "vae"), dtype)
    text = text_encoder_from_config(read_config(root, "text_encoder"), dtype)
    sched = scheduler_from_config(read_config(root, "scheduler", "scheduler_config.json"))
    return unet, vae, text, sched


def convert_folder(root: str, specs=None) -> dict:
    """Read and convert every weight file of the folder. -> {unet, vae, text_encoder} of
    jax arrays on the default device."""
    unet, vae, text, _ = specs or build_specs(root)
    vae_cfg = read_config(root, "vae")
    convert = {
        "unet": lambda t, src: convert_unet(t, unet, src),
        "vae": lambda t, src: convert_vae(t, vae, vae_cfg, src),
        "text_encoder": lambda t, src: convert_text_encoder(t, text, src),
    }
    out = {}
    # One component at a time, so at most two host copies of the largest (the UNet) coexist.
    for name, fn in convert.items():
        tensors, src = load_tensors(root, name)
        host = fn(tensors, src)
        del tensors
        out[name] = jax.tree_util.tree_map(jnp.asarray, host)
        del host
    return out


def _restore(params_dir: str) -> Any:
    """The cached params on the default device; shapes come from the checkpoint's metadata,
    which is much faster than tracing the modules' init (the cache marker vouches for them)."""
    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.metadata(params_dir).item_metadata.tree
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree
    )
    return ckptr.restore(params_dir, target)


def default_cache(root: str) -> str:
    """Where the converted checkpoint of a folder lives unless told otherwise:
    cache_root()/pretrained/NAME-HASH, HASH from the folder's resolved absolute path."""
    real = os.path.realpath(os.path.expanduser(root))
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    return os.path.join(cache_root(), "pretrained", f"{os.path.basename(real)}-{digest}")


def _read_marker(cache: str) -> dict | None:
    try:
        with open(os.path.join(cache, _MARKER)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _layout_hash() -> str:
    """Hash of the modules whose parameter trees the cache holds: edits to them rebuild it."""
    h = hashlib.sha256()
    for mod in (layers, unet_module, autoencoder, text_encoder):
        with open(mod.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _expected_marker(root: str) -> dict:
    return {"format": _FORMAT, "layout": _layout_hash(), "files": fingerprint(root)}


def _save_cache(cache: str, params: dict, marker: dict) -> bool:
    """Write params to cache atomically (a temporary folder renamed into place)."""
    parent = os.path.dirname(cache) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:
        return False
    if not os.access(parent, os.W_OK):
        return False
    tmp = temporary(cache)  # once the folders of killed conversions are removed
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.abspath(os.path.join(tmp, "params")), params)
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump(marker, f)
        if os.path.isdir(cache):
            shutil.rmtree(cache)  # a stale cache of ours (checked by the caller)
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def load_pretrained(
    root: str, cache: str | None | bool = True, dtype: Dtype = jnp.float32, verbose: bool = False
) -> Pretrained:
    """Load a diffusers SD folder. cache: True = default_cache(DIR), a path, or False/None: none.

    The first load converts the safetensors files and writes the Orbax cache; later loads restore
    it as long as no config or weight file changed. dtype is the modules' compute dtype; params
    are float32 either way.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise UserError(f"--pretrained {root} is not a folder: pass a diffusers pipeline folder")
    component_dir(root, "tokenizer")
    specs = build_specs(root, dtype)
    unet, vae, text, sched = specs
    path = default_cache(root) if cache is True else (os.path.abspath(cache) if cache else None)
    marker = _expected_marker(root)
    t0 = time.perf_counter()
    if path and os.path.exists(path):
        found = _read_marker(path)
        if found is None:
            raise UserError(
                f"cache path {path} exists and is not a jldm cache: pick another cache path"
            )
        if found == marker:
            try:
                params = _restore(os.path.join(path, "params"))
                return Pretrained(
                    root, unet, vae, text, sched, params, time.perf_counter() - t0, "cache"
                )
            except Exception as e:  # a damaged cache is rebuilt from the source files
                logger.warning(
                    f"warning: cache {path} unreadable ({type(e).__name__}); reconverting"
                )
    params = convert_folder(root, specs)
    seconds = time.perf_counter() - t0
    if path:
        if not _save_cache(path, params, marker):
            logger.warning(f"warning: cannot write the cache {path}; the next load converts again")
        elif verbose:
            logger.info(f"converted {root} in {seconds:.1f} s; cached in {path}")
    return Pretrained(root, unet, vae, text, sched, params, seconds, "converted")
