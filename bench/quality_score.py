"""The sample figures the bench studies report, in the project's classifier space.

score(): class accuracy, Frechet distance, FD_inf (jldm.eval.frechet_inf), kernel distance,
precision and recall of images against the reference's test split; real_score(): the same
figures of random training images, drawn per class and rendered at a given resolution, as the
samples of a perfect model would score.
"""

import numpy as np

KEYS = ("class_accuracy", "frechet", "fd_inf", "kid", "precision", "recall")


def score(reference, images: np.ndarray, labels: np.ndarray) -> dict:
    """Figures of images [N, H, W, C] in [0, 1] with class labels [N] (jldm.eval.quality)."""
    from jldm.eval.frechet_inf import frechet_distance_inf
    from jldm.eval.quality import score_samples

    q = score_samples(reference, images, labels)
    feats = reference.classifier.features(images)
    real = reference.features(*images.shape[1:3])
    q["fd_inf"] = frechet_distance_inf(feats, real)
    return {k: float(q[k]) for k in KEYS}


def real_score(data, per_class: int, seed: int = 0) -> dict:
    """score() of per_class random training images of each class of config.data `data`,
    rendered at data.resolution as training renders them."""
    from jldm.data import load_split, preprocess, to_unit
    from jldm.data.datasets import dataset_of
    from jldm.eval.quality import reference_for

    dataset = dataset_of(data)
    train = load_split(dataset, "train")
    rng = np.random.default_rng(seed)
    pick = np.concatenate(
        [
            rng.permutation(np.flatnonzero(train.labels == c))[:per_class]
            for c in range(data.num_classes)
        ]
    )
    images = to_unit(preprocess(train.images[pick], data.resolution))
    return score(reference_for(dataset), images, train.labels[pick])
