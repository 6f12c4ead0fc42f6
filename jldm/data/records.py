"""A split of a prepared TFDS dataset: read by index (Records, nothing held in memory) or whole
into memory as numpy (Split)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jldm.errors import UserError

# Records decoded per __getitems__ call: large enough to amortise the call, small enough that a
# chunk of decoded dicts stays a small fraction of the final array.
_READ_CHUNK = 8192


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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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
                f"cannot read dataset '{name}' ({first_line(e)}): this array_record build "
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


def _check_split(name: str, split: str, splits: Any) -> None:
    available = sorted(splits.keys())
    # TFDS split syntax: "train", "train[:90%]", "train+test[:10]".
    for part in split.split("+"):
        base = part.split("[", 1)[0].strip()
        if base not in available:
            raise UserError(
                f"split '{base}' not in dataset '{name}': pick one of {', '.join(available)}"
            )


def split_records(name: str, split: str, builder: tfds.core.DatasetBuilder) -> Records:
    """The records of split (TFDS split syntax) of a prepared builder's image classification
    dataset (features image and label); anything else is a UserError."""
    _check_split(name, split, builder.info.splits)
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


def read_split(records: Records) -> Split:
    """Every record in memory, read-only: images uint8 [N, H, W, C], labels int32 [N]."""
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
