"""TFDS catalog datasets ("mnist", "name/config", "name:1.2.3") prepared in a data_dir: found on
disk and opened read-only, never importing catalog code; anything missing is a UserError
saying how to prepare it."""

from __future__ import annotations

import json
import re
from typing import Any

import tensorflow_datasets as tfds
from etils.epath import Path

from jldm.data.datasets import BUILTINS
from jldm.errors import UserError

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_CATALOG_NAME_RE = re.compile(
    r"^(?P<dataset>[A-Za-z0-9_]+)(?:/(?P<config>[^/:]+))?(?::(?P<version>\d+\.\d+\.\d+))?$"
)


def catalog_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """A read-only builder for a prepared catalog dataset; never imports catalog code."""
    m = _CATALOG_NAME_RE.match(name)
    if m is None:
        raise UserError(
            f"data.name={name!r} is not a dataset name: use {', '.join(BUILTINS)}, or a TFDS "
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
