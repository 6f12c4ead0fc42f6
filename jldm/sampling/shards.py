"""Sampling at scale: N images in batches of B, each batch split over every device, written as
uint8 .npz shards as they finish, so a stopped job resumes where it stopped.

OUT/shard_00000.npz ... hold `images` [b, H, W, C] uint8 and `labels` [b] (b = B but for the
last); OUT/manifest.json the settings, which a resume must repeat. Shard i's images depend on
(seed, i) only: a resumed folder holds exactly the images of an uninterrupted run. Class labels
cycle through the classes, so every class gets N / C images. OUT may be a cloud folder
(gs://...): shards and manifest are then written as objects through etils.epath.
"""

import json
import time
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from jldm.build.ranges import check_seed
from jldm.data.paths import (
    isfile,
    join,
    listdir,
    makedirs,
    read_bytes,
    write_atomic,
    write_bytes_atomic,
)
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.sampling.pipeline import make_generator
from jldm.sampling.run import conditions

MANIFEST = "manifest.json"


class Written(NamedTuple):
    """What sample_shards did: shards written now and found finished, images in all, seconds."""

    written: int
    skipped: int
    images: int
    seconds: float


def shard_path(folder: str, index: int) -> str:
    return join(folder, f"shard_{index:05d}.npz")


def shard_paths(folder: str) -> list[str]:
    """The finished shards of folder, in order."""
    names = sorted(n for n in listdir(folder) if n.startswith("shard_") and n.endswith(".npz"))
    return [join(folder, n) for n in names]


def _check_manifest(folder: str, settings: dict) -> None:
    path = join(folder, MANIFEST)
    if isfile(path):
        old = json.loads(read_bytes(path))
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise UserError(
                f"{folder} holds shards of other settings ({', '.join(diff)}): pass another --out, "
                "or the settings it was started with to resume it"
            )
    elif shard_paths(folder):
        raise UserError(f"{folder} holds shards but no {MANIFEST}: pass another --out")


def _write_atomic(path: str, **arrays) -> None:
    """np.savez to exactly path, atomically (jldm.data.paths.write_atomic)."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def save_npz(path: str, **arrays) -> None:
    """np.savez(path, **arrays), atomically (jldm.data.paths.write_atomic): a temporary file
    renamed over path locally, one object upload to a cloud path. A failed write leaves the
    previous file at path as it was. As np.savez, a path without .npz gets it appended."""
    _write_atomic(path if path.endswith(".npz") else path + ".npz", **arrays)


def sample_shards(
    run: Loaded,
    folder: str,
    *,
    num: int,
    batch_size: int,
    classes: list[int] | None = None,
    sampler: str,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    seed: int = 0,
) -> Written:
    """num class-conditional samples of run into folder as uint8 shards of batch_size images.

    classes: the labels to cycle through (None: every class). The batch is split over all
    devices (batch_size must be a multiple of their number); finished shards are skipped.
    """
    devices = jax.devices()
    if num < 1 or batch_size < 1:
        raise UserError(f"--num={num} and --batch_size={batch_size} must be >= 1")
    if batch_size % len(devices):
        raise UserError(
            f"--batch_size={batch_size} is not a multiple of the {len(devices)} devices: "
            "make it one"
        )
    num_classes = run.config.data.num_classes
    classes = list(range(num_classes)) if classes is None else list(classes)
    settings = {
        "run_step": int(run.step),
        "num": num,
        "batch_size": batch_size,
        "classes": classes,
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "eta": eta,
        "seed": seed,
    }
    makedirs(folder)
    _check_manifest(folder, settings)
    write_bytes_atomic(join(folder, MANIFEST), json.dumps(settings, indent=2).encode())

    mesh = Mesh(np.asarray(devices), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    labels_of = lambda i: np.asarray(classes, np.int32)[
        (i * batch_size + np.arange(batch_size)) % len(classes)
    ]
    gen = make_generator(
        run,
        conditions(run, labels_of(0)),
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        eta=eta,
        split=len(devices),
    )
    # The generator's program with its batch split over the devices.
    fn = jax.jit(gen.fn, out_shardings=batch)
    params = jax.device_put(gen.params, replicated)
    inputs = jax.device_put(gen.inputs, replicated)
    count = -(-num // batch_size)
    done = set(shard_paths(folder))
    todo = [i for i in range(count) if shard_path(folder, i) not in done]
    base = jax.random.PRNGKey(check_seed(seed))
    t0 = time.perf_counter()
    for i in tqdm(todo, desc="shards", unit="shard", disable=None, dynamic_ncols=True):
        labels = labels_of(i)
        cond = jax.device_put(conditions(run, labels), batch)
        images = np.asarray(fn(params, cond, jax.random.fold_in(base, i), inputs))
        keep = min(batch_size, num - i * batch_size)
        images, labels = images[:keep], labels[:keep]
        if not np.isfinite(images).all():
            raise UserError(
                f"{sampler} produced non-finite samples in shard {i}: the run may have diverged, "
                "or lower --guidance / change --sampler (finished shards are kept)"
            )
        u8 = np.round(images * 255.0).astype(np.uint8)
        _write_atomic(shard_path(folder, i), images=u8, labels=labels)
    return Written(len(todo), count - len(todo), num, time.perf_counter() - t0)
