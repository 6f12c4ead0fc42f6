"""A small MLP classifier per dataset: the feature space for sample accuracy and Frechet distance.

It is an MLP rather than a CNN so that it trains from scratch on a laptop CPU (a few seconds for
digits, well under a minute for Fashion-MNIST); jldm.eval.classifier_cache keeps one per dataset.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jldm.data.paths import is_local, read_bytes, write_bytes_atomic
from jldm.errors import UserError

log = logging.getLogger(__name__)

# Bump when the architecture or training recipe changes, so old caches are retrained.
_RECIPE = "mlp-v1"
HIDDEN: tuple[int, ...] = (256, 128)
_BATCH = 128
_MIN_EPOCHS = 8
# Small datasets (digits: ~1.5k images) need many epochs to converge; steps are cheap there.
_MIN_STEPS = 1200
_LR = 2e-3
_WEIGHT_DECAY = 1e-4
_SEED = 0
_CHUNK = 4096

Params = list[tuple[jax.Array, jax.Array]]


def to_native(images01: jax.Array, image_shape: tuple[int, int, int]) -> jax.Array:
    """Resize images01: [N, h, w, C] to the dataset's [N, H, W, C] (antialiased bilinear)."""
    h, w, c = image_shape
    if images01.shape[1:] == (h, w, c):
        return images01
    n = images01.shape[0]
    return jax.image.resize(images01, (n, h, w, c), method="linear", antialias=True)


def _mlp(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Penultimate ReLU features [N, F] and logits [N, K] of standardised x: [N, D]."""
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h, h @ w + b


@partial(jax.jit, static_argnames=("image_shape",))
def _forward(
    params: Params,
    mean: jax.Array,
    scale: jax.Array,
    images01: jax.Array,
    image_shape: tuple[int, int, int],
) -> tuple[jax.Array, jax.Array]:
    """Penultimate features [N, F] and logits [N, K] of images01: [N, h, w, C]."""
    # Clipped as a saved sample would be; resizing afterwards matches how test data is rendered.
    x = to_native(jnp.clip(images01.astype(jnp.float32), 0.0, 1.0), image_shape)
    return _mlp(params, (x.reshape(x.shape[0], -1) - mean) / scale)


def _init(key: jax.Array, sizes: Sequence[int]) -> Params:
    """He-initialised dense layers for consecutive widths in sizes."""
    params = []
    for k, (fan_in, fan_out) in zip(
        jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:], strict=True), strict=True
    ):
        w = jax.random.normal(k, (fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
        params.append((w, jnp.zeros((fan_out,))))
    return params


def _train(
    x: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = _SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit MLP weights to standardised inputs x: [N, D] and labels: [N] (deterministic)."""
    n, d = x.shape
    batch = min(_BATCH, n)
    steps_per_epoch = n // batch
    epochs = max(_MIN_EPOCHS, math.ceil(_MIN_STEPS / steps_per_epoch))
    schedule = optax.cosine_decay_schedule(_LR, epochs * steps_per_epoch)
    optimizer = optax.adamw(schedule, weight_decay=_WEIGHT_DECAY)
    params = _init(jax.random.key(seed), (d, *HIDDEN, num_classes))
    # Batch order from numpy: a fresh permutation per epoch, dropping a different remainder each
    # time; cheaper to build than inside the compiled loop.
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(n)[: steps_per_epoch * batch] for _ in range(epochs)])
    order = order.reshape(epochs * steps_per_epoch, batch).astype(np.int32)

    def loss_fn(p: Params, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(_mlp(p, xb)[1], yb).mean()

    @jax.jit
    def fit(p: Params, xs: jax.Array, ys: jax.Array, order: jax.Array) -> Params:
        def step(c: tuple, ib: jax.Array) -> tuple:
            p, s = c
            grads = jax.grad(loss_fn)(p, xs[ib], ys[ib])
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (p, optimizer.init(p)), order)[0][0]

    params = fit(params, jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32), order)
    return [(np.asarray(w), np.asarray(b)) for w, b in params]


@dataclass(frozen=True, eq=False)
class Classifier:
    """An MLP on images resized to the dataset's native shape; weights are numpy arrays."""

    params: list[tuple[np.ndarray, np.ndarray]]
    mean: np.ndarray  # [H*W*C] per-pixel mean of the training images in [0, 1]
    scale: float  # one global std: border pixels are constant, a per-pixel std would blow up
    image_shape: tuple[int, int, int]
    data_key: str

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return int(self.params[-1][1].shape[0])

    @property
    def feature_dim(self) -> int:
        """Width F of the penultimate layer."""
        return int(self.params[-1][0].shape[0])

    def _check(self, images01: np.ndarray | jax.Array) -> None:
        if images01.ndim != 4 or images01.shape[-1] != self.image_shape[-1]:
            raise UserError(
                f"images must be [N, H, W, {self.image_shape[-1]}] for this dataset, "
                f"got shape {tuple(images01.shape)}: pass samples of the dataset's channel count"
            )

    def _run(self, images01: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Features [N, F] and logits [N, K] of images01: [N, h, w, C] in [0, 1], in chunks."""
        self._check(images01)
        mean = jnp.asarray(self.mean)
        scale = jnp.float32(self.scale)
        feats = [np.zeros((0, self.feature_dim), np.float32)]
        logits = [np.zeros((0, self.num_classes), np.float32)]
        for i in range(0, images01.shape[0], _CHUNK):
            chunk = jnp.asarray(images01[i : i + _CHUNK], jnp.float32)
            m = chunk.shape[0]
            # Padding to a power of two bounds recompilation to a few batch sizes.
            padded = min(_CHUNK, 1 << max(m - 1, 0).bit_length())
            chunk = jnp.pad(chunk, ((0, padded - m), (0, 0), (0, 0), (0, 0)))
            f, lg = _forward(self.params, mean, scale, chunk, self.image_shape)
            feats.append(np.asarray(f[:m]))
            logits.append(np.asarray(lg[:m]))
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images01: np.ndarray | jax.Array) -> np.ndarray:
        """Penultimate ReLU activations [N, F] of images01: [N, h, w, C] in [0, 1]."""
        return self._run(images01)[0]

    def logits(self, images01: np.ndarray | jax.Array) -> np.ndarray:
        """Class logits [N, K] of images01: [N, h, w, C] in [0, 1]."""
        return self._run(images01)[1]

    def predict(self, images01: np.ndarray | jax.Array) -> np.ndarray:
        """Predicted class ids int32 [N] of images01: [N, h, w, C] in [0, 1]."""
        return self.logits(images01).argmax(axis=-1).astype(np.int32)

    def accuracy(self, images01: np.ndarray | jax.Array, labels: np.ndarray) -> float:
        """Fraction of images01: [N, h, w, C] classified as labels: [N]."""
        labels = np.asarray(labels)
        if labels.shape != (images01.shape[0],):
            raise UserError(
                f"labels must be [N] = [{images01.shape[0]}], got shape {labels.shape}: "
                "pass one label per image"
            )
        return float(np.mean(self.predict(images01) == labels))

    def save(self, path: str) -> None:
        """Write weights and the data key to an .npz at path, atomically (no half-written cache):
        locally a temporary file in path's folder (created as needed) renamed over it, to a cloud
        path (gs://...) one object upload."""
        arrays: dict[str, np.ndarray] = {
            "mean": self.mean,
            "scale": np.float32(self.scale),
            "image_shape": np.asarray(self.image_shape, np.int64),
            "data_key": np.asarray(self.data_key),
        }
        for i, (w, b) in enumerate(self.params):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        if not is_local(path):
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_bytes_atomic(path, buffer.getvalue())
            return
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> Classifier:
        """Read a classifier written by save, from a local or a cloud path."""
        source = path if is_local(path) else io.BytesIO(read_bytes(path))
        with np.load(source, allow_pickle=False) as z:
            n_layers = sum(1 for k in z.files if k.startswith("w"))
            params = [(z[f"w{i}"], z[f"b{i}"]) for i in range(n_layers)]
            return cls(
                params=params,
                mean=z["mean"],
                scale=float(z["scale"]),
                image_shape=tuple(int(s) for s in z["image_shape"]),
                data_key=str(z["data_key"]),
            )


def data_key(images_u8: np.ndarray, labels: np.ndarray) -> str:
    """Recipe, shape and content hash of a training set, so a cache is tied to its data."""
    h = hashlib.sha256(np.ascontiguousarray(images_u8).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    shape = "x".join(str(s) for s in images_u8.shape)
    return f"{_RECIPE}:{shape}:{int(labels.max()) + 1}:{h.hexdigest()[:16]}"


def _resize_round_trip(images01: np.ndarray) -> np.ndarray:
    """images01: [N, H, W, C] upsampled 2x (bilinear) and resized back, as a sample would be."""
    n, h, w, c = images01.shape
    out = []
    for i in range(0, n, _CHUNK):
        chunk = jnp.asarray(images01[i : i + _CHUNK])
        up = jax.image.resize(chunk, (chunk.shape[0], 2 * h, 2 * w, c), "linear")
        out.append(np.asarray(to_native(up, (h, w, c))))
    return np.concatenate(out)


def check_training_set(images_u8: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training images uint8 [N, H, W, C] and labels int32 [N], or a UserError naming the fault."""
    images = np.asarray(images_u8)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise UserError(
            f"training images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
        )
    if images.shape[0] == 0:
        raise UserError("the training split is empty: prepare the dataset again")
    if labels.shape != (images.shape[0],) or labels.min() < 0:
        raise UserError(
            f"training labels must be non-negative ints [N] = [{images.shape[0]}], "
            f"got shape {labels.shape}"
        )
    return images, labels.astype(np.int32)


def train_classifier(train_images_u8: np.ndarray, train_labels: np.ndarray) -> Classifier:
    """Train a Classifier on uint8 images [N, H, W, C] and int labels [N] (fixed seed)."""
    images, labels = check_training_set(train_images_u8, train_labels)
    x01 = images.astype(np.float32) / 255.0
    # Samples judged by this classifier are often generated at another resolution and resized
    # back, which blurs them; a blurred copy of each training image keeps accuracy on those.
    x01 = np.concatenate([x01, _resize_round_trip(x01)])
    x = x01.reshape(x01.shape[0], -1)
    mean = x.mean(axis=0)
    scale = float(x.std())
    params = _train((x - mean) / scale, np.concatenate([labels, labels]), int(labels.max()) + 1)
    return Classifier(
        params=params,
        mean=mean,
        scale=scale,
        image_shape=tuple(int(s) for s in images.shape[1:]),
        data_key=data_key(images, labels),
    )
