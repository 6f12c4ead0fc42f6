"""Precision and recall with k-nearest-neighbour manifolds against hand-worked cases and a
brute-force reference."""

import numpy as np
import pytest

from jldm.eval import precision_recall as pr_mod
from jldm.eval.precision_recall import precision_recall


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition, one point at a time with sorted distance lists."""

    def radius(points, i):
        return sorted(np.linalg.norm(points[i] - q) for j, q in enumerate(points) if j != i)[k - 1]

    def inside(x, points):
        return any(np.linalg.norm(x - p) <= radius(points, i) for i, p in enumerate(points))

    precision = np.mean([inside(f, real) for f in fake])
    recall = np.mean([inside(r, fake) for r in real])
    return float(precision), float(recall)


def test_identical_sets_have_precision_and_recall_one():
    x = np.random.default_rng(0).normal(size=(50, 6))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_far_apart_clusters_have_precision_and_recall_zero():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 3)), 100.0 + rng.normal(size=(30, 3))
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_hand_worked_one_dimensional_case():
    # k = 1 radii: real 0, 1, 2, 3 -> 1 and 10 -> 7; fake 0.5, 5 -> 4.5 and 60, 100 -> 40.
    # Precision: 0.5 (ball of 0) and 5 (ball of 10, |5 - 10| <= 7) are in, 60 and 100 out: 1/2.
    # Recall: 0..3 lie within 4.5 of 0.5; 10 is 5 > 4.5 from 5 and 50 > 40 from 60: 4/5.
    real = np.array([0.0, 1.0, 2.0, 3.0, 10.0])[:, None]
    fake = np.array([0.5, 5.0, 60.0, 100.0])[:, None]
    assert precision_recall(real, fake, k=1) == (0.5, 0.8)
    assert brute_force(real, fake, 1) == (0.5, 0.8)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_on_overlapping_clouds(k, monkeypatch):
    # A chunk smaller than the sets exercises the blocked distance computation.
    monkeypatch.setattr(pr_mod, "_CHUNK", 7)
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40, 4))
    fake = 0.7 * rng.normal(size=(30, 4)) + np.array([0.8, 0.0, 0.0, 0.0])
    got = precision_recall(real, fake, k)
    assert got == pytest.approx(brute_force(real, fake, k), abs=1e-12)
    assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_narrow_samples_are_precise_but_do_not_recall():
    # Samples on a small part of the data: realistic (precision ~1), low coverage (recall low).
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 2))
    fake = 0.2 * rng.normal(size=(400, 2))
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95 and recall < 0.3, (precision, recall)


def test_bad_shapes_and_too_few_points_are_rejected():
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="features"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
