"""The classifiers of jldm.eval.classifier cached on disk, one per dataset, as
classifier_NAME.npz in jldm's cache folder (jldm.cache)."""

from __future__ import annotations

import logging
import re
import zipfile

import numpy as np

from jldm.cache import cache_root
from jldm.data import paths
from jldm.data.datasets import Dataset
from jldm.eval.classifier import Classifier, check_training_set, data_key, train_classifier

log = logging.getLogger(__name__)


def cache_folder(cache_dir: str | None = None) -> str:
    """cache_dir if given (with ~ expanded), else jldm's cache folder (jldm.cache)."""
    return paths.resolve(cache_dir) if cache_dir else cache_root()


def get_classifier(
    train_images_u8: np.ndarray, train_labels: np.ndarray, cache_path: str | None
) -> Classifier:
    """Classifier for uint8 images [N, H, W, C] and labels [N]: loaded from cache_path or trained.

    A cache written for different data (shape, content or training recipe) is retrained and
    replaced.
    """
    images, labels = check_training_set(train_images_u8, train_labels)
    if cache_path is not None:
        cache_path = paths.resolve(cache_path)
        if paths.exists(cache_path):
            key = data_key(images, labels)
            try:
                cached = Classifier.load(cache_path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                log.warning("unreadable classifier cache %s (%s): retraining", cache_path, e)
            else:
                if cached.data_key == key:
                    return cached
                log.info("classifier cache %s is for other data: retraining", cache_path)
    classifier = train_classifier(images, labels)
    if cache_path is not None:
        try:
            classifier.save(cache_path)
        except OSError as e:
            # A read-only cache costs a retrain next time, not the evaluation.
            log.warning("could not cache the classifier at %s (%s)", cache_path, e)
    return classifier


def classifier_for(dataset: Dataset, cache_dir: str | None = None) -> Classifier:
    """The cached classifier of a dataset's train split (trained on first use).

    cache_dir: the cache folder (default: $JLDM_CACHE_DIR, else ~/.cache/jldm; see cache_folder).
    """
    from jldm.data import load_split

    train = load_split(dataset, "train")
    # Catalog names such as "name/config:1.2.3" must not become subfolders.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset.name)
    path = paths.join(cache_folder(cache_dir), f"classifier_{safe}.npz")
    return get_classifier(train.images, train.labels, path)
