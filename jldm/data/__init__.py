"""Datasets as in-memory numpy splits, preprocessing, and the resumable sample order.

The names below load their module on first use, so importing a submodule (jldm.data.paths,
say) does not import TensorFlow Datasets.
"""

import importlib

_HOMES = {
    "Split": "sources",
    "load_split": "sources",
    "preprocess": "sources",
    "to_unit": "sources",
    "batch_indices": "order",
    "batches_for": "order",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'jldm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jldm.data.{_HOMES[name]}"), name)
