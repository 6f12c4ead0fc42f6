"""FID: Frechet distance between InceptionV3 pool features of samples and of a reference set.

The functions behind the jldm-fid command (jldm/scripts/fid.py, also `python -m jldm.eval.fid`).
A set is an .npz file or a folder of .npz shards, local or a cloud path (gs://...), holding
images [N,H,W,C] (floats in [0,1] or uint8, C = 1 or 3) or statistics (`mu` [2048] and
`sigma` [2048,2048], as pytorch-fid writes them); a reference may also be a dataset split
DATASET:SPLIT, its statistics cached per weights file. The weights are the PyTorch FID
Inception checkpoint or its conversion (jldm.convert.inception).
"""

import functools
import hashlib
import logging
import math
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jldm.data.datasets import Dataset
from jldm.data.paths import isdir, isfile, write_atomic
from jldm.errors import UserError
from jldm.eval import fid_inputs as inputs
from jldm.eval.frechet import feature_stats, frechet_distance
from jldm.nn.inception import FEATURES

logger = logging.getLogger(__name__)


def to_unit_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """uint8 [0,255] or float [0,1] images [N,H,W,C], C in (1, 3) -> float32 [N,H,W,3] in [0,1]."""
    x = np.asarray(images)
    inputs.check_image_shape(x.shape, name)
    inputs.check_pixels(x, name)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x)


def inception_features(
    model, variables: dict, images: np.ndarray, batch_size: int = 50
) -> np.ndarray:
    """Pool features of images in [0,1]: [N,H,W,3] -> float64 [N, 2048], one compiled batch."""
    images = to_unit_images(images)
    n = images.shape[0]
    out = []
    for i in range(0, n, batch_size):
        chunk = images[i : i + batch_size]
        pad = batch_size - chunk.shape[0]  # one compiled shape for every chunk
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        feats = np.asarray(_apply(model, variables, jnp.asarray(chunk)), np.float64)
        out.append(feats[: batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, FEATURES))


def load_set(path: str) -> tuple[str, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """("images", [N,H,W,C]) or ("stats", (mu, sigma)) from an .npz file."""
    if not isfile(path):
        raise UserError(f"{path} not found: pass an .npz of images or of mu/sigma statistics")
    try:
        with np.load(inputs.opened(path)) as z:
            files = list(z.files)
            if "mu" in files and "sigma" in files:
                mu, sigma = z["mu"], z["sigma"]
                inputs.check_stats(mu, sigma, path)
                return "stats", (mu, sigma)
            return "images", z[inputs.image_key(path, files)]
    except inputs.UNREADABLE as e:
        raise inputs.unreadable(path, e) from None


class Stats(NamedTuple):
    """Inception statistics of a set: mu [F], sigma [F, F], the features [N, F] while N < F
    (for the low-rank Frechet form; else None) and N (0 for statistics stored without it)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    count: int


def _image_stats(model, variables, images: np.ndarray, name: str, batch_size: int) -> Stats:
    feats = inception_features(model, variables, to_unit_images(images, name), batch_size)
    mu, sigma = feature_stats(feats)
    return Stats(mu, sigma, feats if feats.shape[0] < FEATURES else None, feats.shape[0])


def _streamed_stats(chunks) -> Stats:
    """Stats of feature chunks [n_i, F], one chunk in memory at a time."""
    n, total, outer, kept = 0, np.zeros(FEATURES), np.zeros((FEATURES, FEATURES)), []
    for feats in chunks:
        n += feats.shape[0]
        total += feats.sum(axis=0)
        outer += feats.T @ feats
        if kept is not None:
            kept = [*kept, feats] if n < FEATURES else None
    if n < 2:
        feature_stats(np.concatenate(kept))  # raises: too few samples
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
    return Stats(mu, (sigma + sigma.T) / 2, None if kept is None else np.concatenate(kept), n)


def set_stats(model, variables, path: str, batch_size: int) -> Stats:
    """Stats of an .npz file (images or stored statistics) or a folder of .npz image shards."""
    if isdir(path):

        def chunks():
            for shard in inputs.shards(path):
                kind, data = load_set(shard)
                if kind == "stats":
                    raise UserError(f"{shard} holds statistics: a folder must hold image shards")
                yield inception_features(model, variables, to_unit_images(data, shard), batch_size)

        return _streamed_stats(chunks())
    kind, data = load_set(path)
    if kind == "stats":
        return Stats(np.asarray(data[0], np.float64), np.asarray(data[1], np.float64), None, 0)
    return _image_stats(model, variables, data, path, batch_size)


def parse_ref(ref: str) -> tuple[str, str]:
    """--ref DATASET:SPLIT -> (DATASET, SPLIT); DATASET may hold a version, SPLIT a slice."""
    colon = ref.split("[", 1)[0].rfind(":")
    name, split = ref[:colon], ref[colon + 1 :]
    if colon < 1 or not split:
        raise UserError(f"--ref={ref!r}: pass DATASET:SPLIT, e.g. digits:test")
    return name, split


def dataset_stats(
    model, variables, dataset: Dataset, split: str, weights: str, batch_size: int
) -> Stats:
    """Stats of a dataset's split, cached per dataset name, split and weights file."""
    from jldm.cache import cache_root
    from jldm.data import load_split

    st = os.stat(weights)
    tag = hashlib.sha256(f"{os.path.abspath(weights)}|{st.st_size}|{st.st_mtime_ns}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{dataset.name}-{split}")
    path = os.path.join(cache_root(), "fid", f"{safe}-{tag.hexdigest()[:12]}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as z:
                feats = z["features"] if "features" in z.files else None
                cached = Stats(z["mu"], z["sigma"], feats, int(z["count"]))
            if inputs.finite(cached.mu, cached.sigma):
                return cached
        except (*inputs.UNREADABLE, KeyError):
            pass
        logger.warning(f"warning: the cached statistics {path} are damaged; computing them again")
    images = load_split(dataset, split).images
    stats = _image_stats(model, variables, images, f"{dataset.name}:{split}", batch_size)
    inputs.check_computed(stats.mu, stats.sigma, f"{dataset.name}:{split}")
    kept = {} if stats.features is None else {"features": stats.features}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(
        path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, count=stats.count, **kept)
    )
    return stats


def frechet_low_rank(feats1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of N(feature_stats(feats1)) to N(mu2, sigma2), exact when N < F.

    With B = centred feats1 / sqrt(N - 1), sigma1 = B^T B, and the non-zero eigenvalues of
    sigma1 sigma2 are those of the N x N matrix B sigma2 B^T, so tr (sigma1 sigma2)^(1/2) needs
    no F x F square root (which for F = 2048 costs about a minute on one core).
    feats1: [N, F], mu2: [F], sigma2: [F, F].
    """
    x = np.asarray(feats1, np.float64)
    mu1 = x.mean(axis=0)
    b = (x - mu1) / np.sqrt(x.shape[0] - 1)
    inner = b @ sigma2 @ b.T
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    diff = mu1 - mu2
    trace1 = float(np.sum(b * b))
    value = diff @ diff + trace1 + np.trace(sigma2) - 2.0 * np.sum(np.sqrt(np.clip(eig, 0, None)))
    return max(float(value), 0.0)


def fid_between(set1: Stats, set2: Stats) -> float:
    """FID between two Stats; the low-rank form when a side has fewer images than features
    (its covariance is singular), else frechet_distance."""
    (mu1, s1, f1, _), (mu2, s2, f2, _) = set1, set2
    small = [(f, mu, s) for f, mu, s in ((f1, mu2, s2), (f2, mu1, s1)) if f is not None]
    small = [c for c in small if c[0].shape[0] < c[0].shape[1]]
    if small:
        f, mu, s = min(small, key=lambda c: c[0].shape[0])
        return frechet_low_rank(f, mu, s)
    return frechet_distance(mu1, s1, mu2, s2)


WEIGHTS_ENV = "JLDM_FID_WEIGHTS"


def configured_weights(given: str = "") -> str | None:
    """The FID Inception weights file: given (a config's), else $JLDM_FID_WEIGHTS; None when
    neither names one. A named file that is not there is a UserError: nothing is downloaded."""
    path = given or os.environ.get(WEIGHTS_ENV, "")
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        what = "train.fid_weights" if given else f"${WEIGHTS_ENV}"
        raise UserError(
            f"{what} names {path}, which is not a file: point it at the FID Inception weights "
            f"(pt_inception-2015-12-05-6726825d.pth), or leave it empty for no FID"
        )
    return path


@functools.lru_cache(maxsize=2)
def _inception(weights: str):
    """The Inception of a weights file, converted once per process (a run's every watch step)."""
    from jldm.convert.inception import load_inception

    return load_inception(weights)


def fid_to_split(
    images01: np.ndarray,
    dataset: Dataset,
    split: str,
    weights: str,
    batch_size: int = 50,
) -> float:
    """FID of images01 [N, H, W, C] in [0, 1] against a dataset's split, whose statistics are
    cached as --ref's (dataset_stats)."""
    model, variables = _inception(weights)
    batch_size = max(1, min(batch_size, len(images01)))  # a few samples: no padded batch
    samples = _image_stats(model, variables, images01, "samples", batch_size)
    reference = dataset_stats(model, variables, dataset, split, weights, batch_size)
    return fid_between(samples, reference)


def stats_file(path: str) -> str:
    """The file --save_stats path names: as np.savez, a path without .npz gets it appended."""
    return path if path.endswith(".npz") else path + ".npz"


def save_stats_npz(path: str, stats: Stats) -> None:
    """stats' mu and sigma to stats_file(path) (local or cloud), atomically: a failed write
    leaves the previous file there as it was (jldm.data.paths.write_atomic)."""
    write_atomic(stats_file(path), lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma))


def fid(
    samples: str,
    reference: str | tuple[Dataset, str],
    weights: str,
    batch_size: int = 50,
    save_stats: str | None = None,
) -> tuple[float, int, int]:
    """(FID, N samples, N reference) between two sets (.npz files or folders of shards; N = 0
    for statistics), with Inception weights from a file. reference may instead be a dataset
    split, (Dataset, SPLIT). Every file of both sets, or the split, is checked before the
    Inception weights are read (fid_inputs.check_set); statistics and an FID that are not
    finite are refused, never written or returned."""
    from jldm.convert.inception import load_inception

    inputs.check_set(samples)
    if isinstance(reference, tuple):
        from jldm.data.sources import open_split

        open_split(*reference)  # a missing dataset or split (a built-in one is prepared)
    else:
        inputs.check_set(reference)
    model, variables = load_inception(weights)
    set1 = set_stats(model, variables, samples, batch_size)
    inputs.check_computed(set1.mu, set1.sigma, samples)
    if isinstance(reference, tuple):
        set2 = dataset_stats(model, variables, *reference, weights, batch_size)
    else:
        set2 = set_stats(model, variables, reference, batch_size)
        inputs.check_computed(set2.mu, set2.sigma, reference)
    value = fid_between(set1, set2)
    if not math.isfinite(value):
        raise UserError(
            f"the FID came out {value} from finite statistics: a numerical failure; nothing "
            "was written (check the --weights file and the sets' sizes)"
        )
    if save_stats:
        save_stats_npz(save_stats, set2)
    return value, set1.count, set2.count


if __name__ == "__main__":  # python -m jldm.eval.fid: the jldm-fid command
    from jldm.scripts.fid import run

    run()
