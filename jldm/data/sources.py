"""Dataset splits from our own builders or prepared TFDS catalog datasets: read by index
(open_split) or whole in memory as numpy (load_split)."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils.epath import Path

from jldm.data.builders import DEFAULT_FASHION_DIR, JldmDigits, JldmFashionMnist, fashion_files
from jldm.data.paths import is_local, resolve
from jldm.errors import UserError

# Records decoded per __getitems__ call: large enough to amortise the call, small enough that a
# chunk of decoded dicts stays a small fraction of the final array.
_READ_CHUNK = 8192
# Images resized per einsum; bounds the float64 intermediates to a few hundred MB.
_RESIZE_CHUNK = 4096

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_CATALOG_NAME_RE = re.compile(
    r"^(?P<dataset>[A-Za-z0-9_]+)(?:/(?P<config>[^/:]+))?(?::(?P<version>\d+\.\d+\.\d+))?$"
)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One dataset split in memory: images uint8 [N, H, W, C], labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),) or self.labels.dtype != np.int32:
            raise ValueError(
                f"labels must be int32 [{len(self.images)}], got {self.labels.dtype} "
                f"{self.labels.shape}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes named by the dataset."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


def _path(p: str | os.PathLike) -> str:
    # A cloud data_dir (gs://...) reaches TFDS as given; it reads and writes through epath.
    return resolve(p)


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike,
    fashion_dir: str | os.PathLike = DEFAULT_FASHION_DIR,
) -> Split:
    """Whole split in memory: images uint8 [N, H, W, C], labels int32 [N].

    name is "digits" or "fashion_mnist" (built into data_dir on first use, no network) or a TFDS
    catalog dataset ("mnist", "name/config", "name:1.2.3") already prepared there as array_record.
    """
    # fashion_dir only identifies fashion_mnist; leaving it out of other keys avoids cache misses.
    fashion = _path(fashion_dir) if name == "fashion_mnist" else ""
    return _load_split_cached(name, split, _path(data_dir), fashion)


@functools.lru_cache(maxsize=8)
def _load_split_cached(name: str, split: str, data_dir: str, fashion_dir: str) -> Split:
    return _read_split(_open(name, split, data_dir, fashion_dir))


def _open(name: str, split: str, data_dir: str, fashion_dir: str) -> Records:
    if name in ("digits", "fashion_mnist"):
        builder = _own_builder(name, data_dir, fashion_dir)
    else:
        builder = _catalog_builder(name, data_dir)
    _check_split(name, split, builder.info.splits)
    return _records(name, split, builder)


def _own_builder(name: str, data_dir: str, fashion_dir: str) -> tfds.core.DatasetBuilder:
    def make() -> tfds.core.DatasetBuilder:
        if name == "digits":
            return JldmDigits(data_dir=data_dir, file_format="array_record")
        return JldmFashionMnist(
            data_dir=data_dir, file_format="array_record", fashion_dir=fashion_dir
        )

    builder = make()
    # Our own check: TFDS's is_prepared() logs a warning for every fresh data_dir.
    if _prepared(builder):
        return builder
    if name == "fashion_mnist":
        # Fail before anything is created under data_dir.
        fashion_files(fashion_dir)
    if not is_local(data_dir):
        # No flock on an object store: processes preparing at once each write their own
        # temporary folder, and TFDS moves a finished one into place.
        try:
            builder.download_and_prepare()
        except (OSError, RuntimeError) as e:  # array_record's writer raises RuntimeError
            raise UserError(
                f"cannot write dataset '{name}' into {data_dir} ({_first_line(e)}): prepare it "
                "with a local --config.data.data_dir and copy that folder there"
            ) from e
        return make()
    try:
        os.makedirs(data_dir, exist_ok=True)
        # Processes sharing data_dir (multi-process training, parallel runs) prepare one at a
        # time; one that waited finds the data prepared and reads its info afresh.
        with open(os.path.join(data_dir, f".{name}.prepare.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _prepared(builder):
                return make()
            builder.download_and_prepare()
    except OSError as e:
        raise UserError(
            f"cannot write dataset '{name}' into {data_dir} ({e.strerror or e}): "
            "set --config.data.data_dir to a writable folder"
        ) from e
    return builder


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


def _catalog_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """A read-only builder for a prepared catalog dataset; never imports catalog code."""
    m = _CATALOG_NAME_RE.match(name)
    if m is None:
        raise UserError(
            f"data.name={name!r} is not a dataset name: use digits, fashion_mnist, or a TFDS "
            "name such as mnist, cifar10, name/config or name:1.2.3"
        )
    build_cmd = f"`tfds build {name} --data_dir {data_dir} --file_format array_record`"
    not_prepared = (
        f"dataset '{name}' is not prepared in {data_dir}: prepare it with {build_cmd} "
        "on a machine with network, or pick data.name=digits"
    )
    root = Path(data_dir) / m["dataset"]
    if m["config"]:
        root = root / m["config"]
    if m["version"]:
        version_dir = root / m["version"]
        if not (version_dir / "dataset_info.json").is_file():
            raise UserError(not_prepared)
    else:
        versions = _prepared_versions(root)
        if not versions:
            configs = sorted(d.name for d in _subdirs(root) if _prepared_versions(d))
            if configs and not m["config"]:
                raise UserError(
                    f"dataset '{name}' in {data_dir} is prepared for configs "
                    f"{', '.join(configs)}: pick one, e.g. data.name={name}/{configs[0]}"
                )
            raise UserError(not_prepared)
        version_dir = versions[-1]

    if not any(version_dir.glob("*.array_record-*")):
        info = _read_json(version_dir / "dataset_info.json")
        stored = info.get("fileFormat", "tfrecord")
        raise UserError(
            f"dataset '{name}' in {version_dir} is stored as {stored}, but jldm reads "
            f"array_record without TensorFlow: rebuild it with {build_cmd}"
        )
    return tfds.builder_from_directory(str(version_dir))


def _subdirs(path: Path) -> list[Path]:
    return [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []


def _prepared_versions(root: Path) -> list[Path]:
    """Version folders under root holding a dataset_info.json, oldest first."""
    found = [
        d
        for d in _subdirs(root)
        if _VERSION_RE.match(d.name) and (d / "dataset_info.json").is_file()
    ]
    return sorted(found, key=lambda d: tuple(int(p) for p in d.name.split(".")))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}): delete that folder and prepare it again") from e


def _check_split(name: str, split: str, splits: Any) -> None:
    available = sorted(splits.keys())
    # TFDS split syntax: "train", "train[:90%]", "train+test[:10]".
    for part in split.split("+"):
        base = part.split("[", 1)[0].strip()
        if base not in available:
            raise UserError(
                f"split '{base}' not in dataset '{name}': pick one of {', '.join(available)}"
            )


class Records:
    """One split of a TFDS dataset read by index, nothing held in memory: rows(idx) decodes
    only those records. image_shape [H, W, C] is the first record's; every record must match.
    """

    def __init__(self, name: str, source: Any, class_names: tuple[str, ...]):
        self.name, self.source, self.class_names = name, source, class_names
        try:
            first = np.asarray(source[0]["image"])
        except (OSError, RuntimeError) as e:  # array_record's reader raises RuntimeError
            raise UserError(
                f"cannot read dataset '{name}' ({_first_line(e)}): this array_record build "
                "may read local files only; copy the prepared dataset to a local data_dir"
            ) from e
        self.image_shape = first.shape if first.ndim == 3 else (*first.shape, 1)
        if first.dtype != np.uint8 or len(self.image_shape) != 3:
            raise UserError(
                f"dataset '{name}' has {first.dtype} images of shape {first.shape}: "
                "jldm needs uint8 [H, W, C] images"
            )

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records idx [n] -> images uint8 [n, H, W, C], labels int32 [n]."""
        records = self.source.__getitems__([int(i) for i in idx])
        if any(np.shape(r["image"])[:2] != self.image_shape[:2] for r in records):
            raise UserError(
                f"dataset '{self.name}' has images of different sizes: jldm needs one image size"
            )
        images = np.stack([r["image"] for r in records]).reshape(len(records), *self.image_shape)
        return images, np.asarray([r["label"] for r in records], np.int32)


def open_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike,
    fashion_dir: str | os.PathLike = DEFAULT_FASHION_DIR,
) -> Records:
    """A split read by index (see load_split for name); a missing dataset fails at once."""
    fashion = _path(fashion_dir) if name == "fashion_mnist" else ""
    return _open(name, split, _path(data_dir), fashion)


def _records(name: str, split: str, builder: tfds.core.DatasetBuilder) -> Records:
    features = builder.info.features
    missing = [k for k in ("image", "label") if k not in features]
    if missing:
        raise UserError(
            f"dataset '{name}' has no {' or '.join(repr(k) for k in missing)} feature "
            f"(it has {', '.join(features.keys())}): pick an image classification dataset"
        )
    try:
        source = builder.as_data_source(split=split, file_format="array_record")
    except (ValueError, AssertionError) as e:
        raise UserError(
            f"split '{split}' of dataset '{name}' is not TFDS split syntax: "
            "write e.g. train, train[:90%] or train+test"
        ) from e
    if len(source) == 0:
        raise UserError(f"split '{split}' of dataset '{name}' is empty: pick a larger split")
    label_feature = features["label"]
    if isinstance(label_feature, tfds.features.ClassLabel) and label_feature.names:
        class_names = tuple(label_feature.names)
    else:
        class_names = ()  # known once the labels are read
    return Records(name, source, class_names)


def _read_split(records: Records) -> Split:
    n = len(records)
    images = np.empty((n, *records.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, _READ_CHUNK):
        stop = min(n, start + _READ_CHUNK)
        images[start:stop], labels[start:stop] = records.rows(np.arange(start, stop))
    class_names = records.class_names or tuple(str(i) for i in range(int(labels.max()) + 1))
    # Cached splits are shared by every caller in the process, so nobody may mutate them.
    images.flags.writeable = False
    labels.flags.writeable = False
    return Split(images=images, labels=labels, class_names=class_names)


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear resize matrix [n_out, n_in], half-pixel centres, equal to jax.image.resize's."""
    # The triangle kernel widens by the shrink factor when downsampling (antialiasing), and rows
    # are renormalised over in-bounds pixels, which clamps at the borders.
    scale = n_out / n_in
    width = max(1.0, 1.0 / scale)
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / width)
    return w / w.sum(axis=1, keepdims=True)


def preprocess(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images [B, H, W, C] -> float32 [B, R, R, C] in [-1, 1], bilinearly resized to R."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {x.shape}")
    if resolution < 1:
        raise UserError(f"data.resolution={resolution} must be a positive number of pixels")
    b, h, w, c = x.shape
    out = np.empty((b, resolution, resolution, c), np.float32)
    if (h, w) == (resolution, resolution):
        out[...] = x
    else:
        wh, ww = _resize_weights(h, resolution), _resize_weights(w, resolution)
        for s in range(0, b, _RESIZE_CHUNK):
            # Channels first so both passes are batched BLAS matmuls over [H, W].
            chunk = np.moveaxis(x[s : s + _RESIZE_CHUNK], -1, 1).astype(np.float64)
            out[s : s + _RESIZE_CHUNK] = np.moveaxis(wh @ chunk @ ww.T, 1, -1)
    out /= 127.5
    out -= 1.0
    # Resizing is a convex combination, so only rounding can leave [-1, 1].
    return np.clip(out, -1.0, 1.0, out=out)


def to_unit(x: Any) -> Any:
    """Model-space images [..] in [-1, 1] -> [0, 1], clipped; keeps numpy or jax array type."""
    return ((x + 1.0) / 2.0).clip(0.0, 1.0)
