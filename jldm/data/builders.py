"""TFDS builders needing no network: scikit-learn's digits, Fashion-MNIST from local idx files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jldm.data.datasets import DEFAULT_FASHION_DIR
from jldm.errors import UserError

FASHION_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# The split is part of the dataset's identity: changing this seed or the fraction changes which
# images are held out, so it needs a new builder VERSION.
_DIGITS_SPLIT_SEED = 20240601
_DIGITS_TEST_FRACTION = 0.2

# idx magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08


def _features(height: int, width: int, class_names: tuple[str, ...]) -> tfds.features.FeaturesDict:
    """Image uint8 [H, W, 1] stored as raw bytes, and a class label."""
    return tfds.features.FeaturesDict(
        {
            # Raw bytes rather than the default int64 list: about 3x faster to write and read.
            "image": tfds.features.Tensor(
                shape=(height, width, 1),
                dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
            ),
            "label": tfds.features.ClassLabel(names=list(class_names)),
        }
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits: images uint8 [1797, 8, 8, 1] in 0..255, labels int64 [1797]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The bundled pixels are integers 0..16; rounding maps 16 to 255 exactly.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of labels [N]: sorted (train, test) indices, 1/5 of each class in test."""
    rng = np.random.Generator(np.random.Philox(key=_DIGITS_SPLIT_SEED))
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = round(len(members) * _DIGITS_TEST_FRACTION)
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


class JldmDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's bundled 8x8 digits (1797 images), split 4/5 train, 1/5 test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI optical digits as bundled with scikit-learn, pixels scaled to 0..255.",
            features=_features(8, 8, tuple(str(i) for i in range(10))),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            # Records keep scikit-learn's order, so a split is reproducible index by index.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        images, labels = digits_arrays()
        train_idx, test_idx = digits_split_indices(labels)
        return {
            "train": self._generate_examples(images[train_idx], labels[train_idx]),
            "test": self._generate_examples(images[test_idx], labels[test_idx]),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


def read_idx_gz(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """A gzipped idx file of unsigned bytes with `ndim` dimensions: uint8 [d0, ..., d(ndim-1)]."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path} is too short to be an idx file: re-install dataset-fashion-mnist")
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0 or magic[2] != _IDX_UBYTE or magic[3] != ndim:
        raise UserError(
            f"{path} has idx magic {magic.hex()}, expected 0000{_IDX_UBYTE:02x}{ndim:02x}: "
            "point --config.data.fashion_dir at the original Fashion-MNIST files"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(
            f"{path} holds {body.size} bytes of data but its header says {shape}: "
            "the file is truncated, re-install dataset-fashion-mnist"
        )
    return body.reshape(shape)


def fashion_files(directory: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Paths of the four idx files by split, or a UserError naming how to get them."""
    root = Path(os.path.expanduser(directory))
    paths = {split: (root / im, root / lb) for split, (im, lb) in FASHION_FILES.items()}
    missing = [p.name for pair in paths.values() for p in pair if not p.is_file()]
    if missing:
        raise UserError(
            f"Fashion-MNIST idx files not found in {root} (missing {', '.join(missing)}): "
            "install Debian's package (apt-get install dataset-fashion-mnist) "
            "or set --config.data.fashion_dir"
        )
    return paths


def read_fashion_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split from idx files: images uint8 [N, 28, 28, 1], labels uint8 [N]."""
    images = read_idx_gz(images_path, ndim=3)
    labels = read_idx_gz(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise UserError(f"{images_path} holds {images.shape[1:]} images, Fashion-MNIST is 28x28")
    if len(images) != len(labels):
        raise UserError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels: the files do not belong together"
        )
    if labels.size and labels.max() >= len(FASHION_CLASS_NAMES):
        raise UserError(f"{labels_path} has label {labels.max()}, Fashion-MNIST has 10 classes")
    return images[..., None], labels


class JldmFashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (60000 train, 10000 test, 28x28) from local gzipped idx files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, fashion_dir: str | os.PathLike = DEFAULT_FASHION_DIR, **kwargs):
        self._fashion_dir = Path(os.path.expanduser(fashion_dir))
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Zalando's Fashion-MNIST article images, read from local idx files.",
            features=_features(28, 28, FASHION_CLASS_NAMES),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        paths = fashion_files(self._fashion_dir)
        return {split: self._generate_examples(*pair) for split, pair in paths.items()}

    def _generate_examples(self, images_path: Path, labels_path: Path):
        images, labels = read_fashion_split(images_path, labels_path)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}
