"""Datasets as in-memory numpy splits, preprocessing, and the resumable sample order."""

from jldm.data.order import batch_indices, batches_for
from jldm.data.sources import Split, load_split, preprocess, to_unit

__all__ = ["Split", "batch_indices", "batches_for", "load_split", "preprocess", "to_unit"]
