"""Evaluation: a per-dataset classifier, Frechet distance in its feature space, sample grids."""

from jldm.eval.classifier import Classifier, train_classifier
from jldm.eval.classifier_cache import classifier_for, get_classifier
from jldm.eval.frechet import feature_stats, frechet_distance
from jldm.eval.grid import make_grid, save_grid
from jldm.eval.quality import (
    Reference,
    make_reference,
    reference_for,
    sample_quality,
    score_samples,
)

__all__ = [
    "Classifier",
    "Reference",
    "classifier_for",
    "feature_stats",
    "frechet_distance",
    "get_classifier",
    "make_grid",
    "make_reference",
    "reference_for",
    "sample_quality",
    "save_grid",
    "score_samples",
    "train_classifier",
]
