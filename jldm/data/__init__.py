"""Datasets (a registry of built-ins and the Dataset value naming one on disk), splits read by
index or whole in memory as numpy, preprocessing, and the resumable sample order.

The names below load their module on first use, so importing a submodule (jldm.data.paths,
say) does not import TensorFlow Datasets.
"""

import importlib

_HOMES = {
    "Dataset": "datasets",
    "dataset_of": "datasets",
    "has_quality": "datasets",
    "Split": "records",
    "load_split": "sources",
    "open_split": "sources",
    "preprocess": "preprocessing",
    "to_unit": "preprocessing",
    "batch_indices": "order",
    "batches_for": "order",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'jldm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jldm.data.{_HOMES[name]}"), name)
