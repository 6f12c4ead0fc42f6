"""Sample quality in the project's own feature space: class accuracy, Frechet distance, and
precision and recall (k-nearest-neighbour manifolds)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jldm.data.datasets import Dataset, reference_split
from jldm.data.paths import resolve
from jldm.errors import UserError
from jldm.eval.classifier import Classifier
from jldm.eval.classifier_cache import cache_folder, classifier_for
from jldm.eval.frechet import feature_stats, frechet_distance
from jldm.eval.kid import kernel_distance
from jldm.eval.precision_recall import precision_recall

_CHUNK = 4096
_K = 3  # neighbours of precision and recall (Kynkaanniemi et al.'s default)


@dataclass(eq=False)
class Reference:
    """A dataset's classifier and test split, with test features per sample resolution."""

    classifier: Classifier
    test_images_u8: np.ndarray  # [N, H, W, C]
    test_labels: np.ndarray  # [N]
    test_accuracy: float
    _features: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    _stats: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False
    )

    def features(self, height: int, width: int) -> np.ndarray:
        """Classifier features [N, F] of the test split rendered at height x width.

        A model trained at another resolution sees the data bilinearly resized (as
        jldm.data.preprocess does), and the classifier resizes its samples back; the reference
        goes through the same two resizes, so perfect samples score like held-out data.
        """
        key = (int(height), int(width))
        if key not in self._features:
            n, h, w, c = self.test_images_u8.shape
            parts = []
            for i in range(0, n, _CHUNK):
                x = jnp.asarray(self.test_images_u8[i : i + _CHUNK], jnp.float32) / 255.0
                if key != (h, w):
                    x = jax.image.resize(x, (x.shape[0], *key, c), "linear", antialias=True)
                parts.append(self.classifier.features(x))
            self._features[key] = np.concatenate(parts)
        return self._features[key]

    def stats(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean [F] and covariance [F, F] of the test split at height x width."""
        key = (int(height), int(width))
        if key not in self._stats:
            self._stats[key] = feature_stats(self.features(*key))
        return self._stats[key]


def make_reference(
    classifier: Classifier, test_images_u8: np.ndarray, test_labels: np.ndarray
) -> Reference:
    """Reference from uint8 test images [N, H, W, C] and labels [N]."""
    images = np.asarray(test_images_u8)
    labels = np.asarray(test_labels)
    return Reference(
        classifier=classifier,
        test_images_u8=images,
        test_labels=labels,
        test_accuracy=classifier.accuracy(images.astype(np.float32) / 255.0, labels),
    )


def score_samples(
    reference: Reference, images01: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float | int | None]:
    """class_accuracy (None without labels), frechet, kid, precision, recall, test_accuracy and
    num_samples of images01: [N, H, W, C].

    kid: the kernel distance to the whole test split (unbiased MMD^2, jldm.eval.kid), whose
    expectation does not move with N: 0 for samples of the test images' own distribution
    (negative values are that, within noise), more for any other. frechet is biased upwards
    for small N (real images score worse at N = 100 than at 500), so compare Frechet figures
    at equal sample counts only. precision and recall (k = 3) compare the samples' features
    with those of as many test images (a fixed subset; all when the split is smaller), None
    with fewer than 4.
    """
    classifier = reference.classifier
    images = np.asarray(images01)
    if images.ndim != 4:
        raise UserError(f"samples of shape {images.shape}: score images [N, H, W, C]")
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if not finite.all():
        raise UserError(
            f"{int((~finite).sum())} of {len(images)} samples hold NaN or Inf values, which "
            "have no quality figures: the sampler diverged; sample with more steps, another "
            "sampler or less guidance"
        )
    class_accuracy = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= classifier.num_classes):
            raise UserError(
                f"sample labels must lie in [0, {classifier.num_classes}), got "
                f"[{labels.min()}, {labels.max()}]: sample with the dataset's class ids"
            )
        class_accuracy = classifier.accuracy(images, labels)
    feats = classifier.features(images)
    mu, sigma = feature_stats(feats)
    ref_mu, ref_sigma = reference.stats(images.shape[1], images.shape[2])
    real = reference.features(*images.shape[1:3])
    precision, recall = _precision_recall(real, feats)
    return {
        "class_accuracy": class_accuracy,
        "frechet": frechet_distance(mu, sigma, ref_mu, ref_sigma),
        "kid": kernel_distance(feats, real) if len(feats) >= 2 else None,
        "precision": precision,
        "recall": recall,
        "test_accuracy": reference.test_accuracy,
        "num_samples": int(images.shape[0]),
    }


def _precision_recall(real: np.ndarray, fake: np.ndarray) -> tuple[float | None, float | None]:
    """Precision and recall against a fixed subset of the real features as large as fake."""
    if len(fake) <= _K or len(real) <= _K:
        return None, None
    if len(real) > len(fake):
        real = real[np.random.default_rng(0).permutation(len(real))[: len(fake)]]
    return precision_recall(real, fake, _K)


@functools.lru_cache(maxsize=4)
def _reference_cached(dataset: Dataset, cache_dir: str) -> Reference:
    from jldm.data import load_split

    classifier = classifier_for(dataset, cache_dir)
    test = load_split(dataset, reference_split(dataset.name))
    return make_reference(classifier, test.images, test.labels)


def reference_for(dataset: Dataset, cache_dir: str | None = None) -> Reference:
    """The Reference of a dataset (classifier cached on disk, statistics kept for the process).

    cache_dir: where the classifier is cached (default: $JLDM_CACHE_DIR, else ~/.cache/jldm).
    """
    # Keyed by resolved paths (the dataset's own are) so periodic evaluation during training
    # loads both splits once.
    return _reference_cached(dataset, resolve(cache_folder(cache_dir)))


def sample_quality(
    images01: np.ndarray,
    labels: np.ndarray | None,
    dataset: Dataset,
    cache_dir: str | None = None,
) -> dict[str, float | int | None]:
    """Quality of samples images01: [N, H, W, C] in [0, 1] with their class labels: [N] or None.

    Returns class_accuracy (fraction of samples classified as their label; None without labels),
    frechet (Frechet distance of classifier features to the test split's), kid (their kernel
    distance, unbiased at any N), precision and recall
    (k-nearest-neighbour manifolds of the same features, see score_samples), test_accuracy (the
    classifier's own accuracy on the test split, the ceiling for class_accuracy) and num_samples.
    The classifier is trained once per dataset and cached in cache_dir (see reference_for).
    """
    reference = reference_for(dataset, cache_dir)
    return score_samples(reference, images01, labels)
