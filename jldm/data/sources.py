"""Dataset splits from our own builders or prepared TFDS catalog datasets: read by index
(open_split) or whole in memory as numpy (load_split). A built-in dataset (jldm.data.datasets)
is built into its data_dir on first use, one process at a time."""

from __future__ import annotations

import fcntl
import functools
import os

import tensorflow_datasets as tfds
from etils.epath import Path

from jldm.data.catalog import catalog_builder
from jldm.data.datasets import Builtin, Dataset, builtin
from jldm.data.paths import is_local
from jldm.data.records import Records, Split, first_line, read_split, split_records
from jldm.errors import UserError

__all__ = ["Records", "Split", "load_split", "open_split"]


def load_split(dataset: Dataset, split: str) -> Split:
    """Whole split in memory: images uint8 [N, H, W, C], labels int32 [N].

    dataset names a built-in ("digits", "fashion_mnist": built into its data_dir on first use,
    no network) or a TFDS catalog dataset ("mnist", "name/config", "name:1.2.3") already
    prepared there as array_record. Splits are kept for the process, keyed by (dataset, split).
    """
    return _load_split_cached(dataset, split)


@functools.lru_cache(maxsize=8)
def _load_split_cached(dataset: Dataset, split: str) -> Split:
    return read_split(open_split(dataset, split))


def open_split(dataset: Dataset, split: str) -> Records:
    """A split read by index (see load_split for dataset); a missing dataset fails at once."""
    b = builtin(dataset.name)
    if b is not None:
        builder = _own_builder(dataset, b)
    else:
        builder = catalog_builder(dataset.name, dataset.data_dir)
    return split_records(dataset.name, split, builder)


def _own_builder(dataset: Dataset, b: Builtin) -> tfds.core.DatasetBuilder:
    name, data_dir = dataset.name, dataset.data_dir
    make = lambda: b.make(data_dir, dataset.source_dir)
    builder = make()
    # Our own check: TFDS's is_prepared() logs a warning for every fresh data_dir.
    if _prepared(builder):
        return builder
    if b.check_source is not None:
        # Fail before anything is created under data_dir.
        b.check_source(dataset.source_dir)
    if not is_local(data_dir):
        # No flock on an object store: processes preparing at once each write their own
        # temporary folder, and TFDS moves a finished one into place.
        try:
            builder.download_and_prepare()
        except (OSError, RuntimeError) as e:  # array_record's writer raises RuntimeError
            raise UserError(
                f"cannot write dataset '{name}' into {data_dir} ({first_line(e)}): prepare it "
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


def _prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()
