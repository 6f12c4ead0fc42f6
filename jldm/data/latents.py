"""Stage-1 encodings on disk: array_record shards of q(z|x), written once, read by index.

A latent run's folder (WORKDIR/latents) holds shard_NNNNN.array_record files, one record per
training image: its label and the posterior mean and std of q(z|x) = N(mean, diag(std^2)).
Stored are the two moments, not one sample: LDM training draws a fresh z = mean + std * eps
each time an image is seen (Rombach et al. 2022, sec. 3; the reparameterisation of Kingma and
Welling 2014), so every epoch sees new latents of the same image. The draw is by (seed, stream
position), so a resumed run and any process count draw the same z.

done.json is written last, atomically: it names what was encoded (stage-1 folder and
checkpoint step, dataset settings), the record count and shape, and the latent scale
1 / std(posterior means). A folder without it is a half-written set and is rebuilt; one with
it is reused after the check that it was encoded from the same stage 1 and data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from grain.sources import ArrayRecordDataSource
from tqdm import tqdm

from jldm.errors import UserError

MARKER = "done.json"
FORMAT = 1
# group_size:1 makes every record its own chunk: reading one record reads no others (what
# random access by index wants; grain logs an error for any other group size).
WRITER_OPTIONS = "group_size:1"
# About this many bytes per shard: a few hundred files for ImageNet-sized latent sets.
SHARD_BYTES = 1 << 28
# Latent draws get their own Philox stream, apart from the sample order's and the flips'.
_NOISE_STREAM = 0x4C61746E


def record_dtype(shape: tuple[int, ...]) -> np.dtype:
    """One record's bytes: int32 label, float32 mean [*shape], float32 std [*shape]."""
    return np.dtype([("label", "<i4"), ("mean", "<f4", shape), ("std", "<f4", shape)])


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.array_record"


def _stale(folder: str) -> list[str]:
    """Files a half-written set may have left in folder."""
    return [n for n in os.listdir(folder) if n.startswith(("shard_", ".tmp-"))]


def read_marker(folder: str) -> dict | None:
    """The finished set's done.json, or None when folder holds no finished set."""
    path = os.path.join(folder, MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}): delete {folder} to encode it again") from e


class _Moments:
    """Streaming mean and variance of many float arrays (Chan et al.'s pairwise update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1)
        n, mean = x.size, float(x.mean())
        m2 = float(np.sum((x - mean) ** 2))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.n * n / total
        self.n = total

    @property
    def std(self) -> float:
        return (self.m2 / self.n) ** 0.5


def write_latents(
    folder: str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    total: int,
    source: dict,
    shard_bytes: int | None = None,
) -> dict:
    """Write chunks (mean [n, h, w, c], std [n, h, w, c], labels [n]) as the set of folder.

    total: the number of records the chunks hold; source: what they were encoded from, kept in
    done.json; shard_bytes: about this many bytes per shard (default SHARD_BYTES). Stale files
    of a half-written set are removed first; done.json is written last. Returns done.json's
    contents. Memory: one chunk at a time.
    """
    shard_bytes = shard_bytes or SHARD_BYTES
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, MARKER)
    if os.path.exists(marker):
        os.remove(marker)  # from here on the folder holds a half-written set
    for name in _stale(folder):
        os.remove(os.path.join(folder, name))
    writer, shard, in_shard, per_shard, dtype, written = None, 0, 0, 0, None, 0
    moments, paths = _Moments(), []
    bar = tqdm(total=total, desc="latents", unit="image", disable=None, dynamic_ncols=True)
    try:
        for mean, std, labels in chunks:
            mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
            if dtype is None:
                dtype = record_dtype(mean.shape[1:])
                per_shard = max(1, shard_bytes // dtype.itemsize)
            rows = np.empty(len(mean), dtype)
            rows["label"], rows["mean"], rows["std"] = labels, mean, std
            moments.add(mean)
            for row in rows:
                if writer is None:
                    paths.append(os.path.join(folder, shard_name(shard)))
                    writer = ArrayRecordWriter(paths[-1], WRITER_OPTIONS)
                writer.write(row.tobytes())
                in_shard += 1
                if in_shard == per_shard:
                    writer.close()
                    writer, shard, in_shard = None, shard + 1, 0
            written += len(rows)
            bar.update(len(rows))
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    if written != total or dtype is None:
        raise ValueError(f"the chunks held {written} records, not {total}")
    for path in paths:  # on disk before the marker says they are
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    meta = {
        "format": FORMAT,
        "source": source,
        "count": written,
        "shape": list(dtype["mean"].shape),
        "shards": len(paths),
        "scale": 1.0 / moments.std,
    }
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{MARKER}")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    return meta


class LatentRecords:
    """A finished set read by index: rows(idx) -> (moments [n, 2, h, w, c] float32 (mean,
    std), labels [n] int32); draw() turns moments into scaled latents. A source of
    jldm.data.stream, which calls draw with each row's stream position."""

    def __init__(self, folder: str, meta: dict):
        self.folder, self.meta = folder, meta
        self.shape = tuple(meta["shape"])
        self.scale = float(meta["scale"])
        self.dtype = record_dtype(self.shape)
        paths = [os.path.join(folder, shard_name(i)) for i in range(meta["shards"])]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{missing[0]} is missing: delete {folder} to encode it again")
        self.source = ArrayRecordDataSource(paths)
        if len(self.source) != meta["count"]:
            raise UserError(
                f"{folder} holds {len(self.source)} records, done.json says {meta['count']}: "
                f"delete {folder} to encode it again"
            )

    def __len__(self) -> int:
        return len(self.source)

    def records(self, idx: np.ndarray) -> np.ndarray:
        """Records idx [n] as a structured array [n] of label, mean and std."""
        data = self.source.__getitems__([int(i) for i in np.asarray(idx).reshape(-1)])
        return np.frombuffer(b"".join(data), self.dtype)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records idx [n] -> moments [n, 2, h, w, c] (mean, std), labels [n] int32."""
        r = self.records(idx)
        return np.stack([r["mean"], r["std"]], axis=1), r["label"].astype(np.int32)

    def draw(self, moments: np.ndarray, seed: int, positions: np.ndarray) -> np.ndarray:
        """z = scale * (mean + std * eps) for moments [..., 2, h, w, c] at stream positions
        [...] (eps by (seed, position)) -> [..., h, w, c] float32."""
        eps = noise(seed, positions, self.shape)
        mean, std = moments[..., 0, :, :, :], moments[..., 1, :, :, :]
        return (self.scale * (mean + std * eps)).astype(np.float32)


def noise(seed: int, positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals [*positions.shape, *shape]: each row a pure function of (seed, its
    stream position), so any process split or resume point draws the same."""
    positions = np.asarray(positions)
    flat = positions.reshape(-1)
    out = np.empty((flat.size, *shape), np.float32)
    stream = (int(seed) ^ _NOISE_STREAM) % (1 << 64)
    for i, p in enumerate(flat):
        key = np.array([stream, int(p) % (1 << 64)], np.uint64)
        out[i] = np.random.Generator(np.random.Philox(key=key)).standard_normal(shape, np.float32)
    return out.reshape(*positions.shape, *shape)


def open_latents(folder: str, source: dict) -> LatentRecords | None:
    """The finished set in folder, None when there is none (missing or half-written).

    A finished set encoded from another source (stage-1 folder or step, dataset settings) is
    a UserError: its latents are not those of this run's stage 1.
    """
    meta = read_marker(folder)
    if meta is None:
        return None
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{folder} holds latents of format {meta.get('format')}, this jldm writes "
            f"{FORMAT}: delete {folder} to encode them again"
        )
    old = meta.get("source", {})
    diff = sorted(k for k in set(old) | set(source) if old.get(k) != source.get(k))
    if diff:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {source.get(k)!r}" for k in diff)
        raise UserError(
            f"{folder} holds latents of another stage 1 or dataset ({shown}): delete {folder} "
            "to encode them again, or restore the settings they were encoded with"
        )
    return LatentRecords(folder, meta)
