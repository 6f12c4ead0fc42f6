"""The datasets jldm builds itself, as a registry, and the one value naming a dataset on disk.

A built-in dataset (Builtin) is built into data_dir on first use without network: how to make
its TFDS builder, the local folder it is built from (if any) and that folder's default, whether
the project has a quality classifier for it, and its reference split. Any other name is a TFDS
catalog dataset ("mnist", "name/config", "name:1.2.3") prepared in data_dir, with no classifier.
A Dataset (name, data_dir, source_dir) is made once from config.data (dataset_of) and handed to
load_split, open_split, the quality figures and FID. Importing this module imports no TFDS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from jldm.data.paths import resolve

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist

# The held-out split of a TFDS catalog dataset: the quality figures and FID measure against it.
CATALOG_REFERENCE_SPLIT = "test"


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A dataset the project builds into data_dir itself, needing no network."""

    # (data_dir, source_dir) -> its TFDS builder, writing array_record.
    make: Callable[[str, str], Any]
    # Raises a UserError when source_dir cannot build it, before anything is written.
    check_source: Callable[[str], Any] | None = None
    # The config.data key naming the local folder it is built from, and that folder's default.
    source_key: str | None = None
    source_default: str = ""
    # The project trains a classifier on it for the quality figures (jldm.eval.quality).
    quality: bool = False
    reference_split: str = "test"


def _digits(data_dir: str, source_dir: str) -> Any:
    from jldm.data.builders import JldmDigits

    return JldmDigits(data_dir=data_dir, file_format="array_record")


def _fashion(data_dir: str, source_dir: str) -> Any:
    from jldm.data.builders import JldmFashionMnist

    return JldmFashionMnist(data_dir=data_dir, file_format="array_record", fashion_dir=source_dir)


def _fashion_files(source_dir: str) -> Any:
    from jldm.data.builders import fashion_files

    return fashion_files(source_dir)


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(make=_digits, quality=True),
    "fashion_mnist": Builtin(
        make=_fashion,
        check_source=_fashion_files,
        source_key="fashion_dir",
        source_default=DEFAULT_FASHION_DIR,
        quality=True,
    ),
}


def builtin(name: str) -> Builtin | None:
    """The registry record of a built-in dataset; None for a TFDS catalog name."""
    return BUILTINS.get(name)


def has_quality(name: str) -> bool:
    """The project has a quality classifier for dataset name (its quality figures exist)."""
    b = builtin(name)
    return b is not None and b.quality


def reference_split(name: str) -> str:
    """The held-out split of dataset name that samples are measured against."""
    b = builtin(name)
    return CATALOG_REFERENCE_SPLIT if b is None else b.reference_split


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset on disk: its name, the TFDS data_dir it is (or is built) in, and for a built-in
    dataset built from a local folder, that folder (source_dir; "" picks the default).

    Paths are resolved on construction (local ones made absolute, cloud ones kept as given), and
    source_dir is "" wherever it does not identify the data, so equal data give equal values
    (they key the per-process caches of splits and quality references).
    """

    name: str
    data_dir: str
    source_dir: str = ""

    def __post_init__(self) -> None:
        b = builtin(self.name)
        source = ""
        if b is not None and b.source_key is not None:
            source = resolve(self.source_dir or b.source_default)
        # A cloud data_dir (gs://...) stays as given: TFDS reads and writes it through epath.
        object.__setattr__(self, "data_dir", resolve(self.data_dir))
        object.__setattr__(self, "source_dir", source)


def dataset_of(data: Any) -> Dataset:
    """The Dataset named by a config's data section (name, data_dir and, for a built-in
    dataset built from a local folder, the key its record names, e.g. fashion_dir)."""
    b = builtin(data.name)
    source = ""
    if b is not None and b.source_key is not None:
        source = data.get(b.source_key, "") or ""
    return Dataset(data.name, os.fspath(data.data_dir), os.fspath(source))
