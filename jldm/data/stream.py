"""Training batches streamed from a source read by index, in grain worker threads.

A source has len() and rows(idx [n]) -> (images [n, ...], labels [n]): a TFDS split read record
by record (records.Records, nothing held in memory), stage-1 posteriors on disk
(latents.LatentRecords, whose draw(rows, seed, positions) samples each row's latent), or arrays
already in memory (ArraySource). Either way, the rows of step s are batches_for(seed, s):
this process's slice of the global batch only, a pure function of (seed, step), so a resumed
run sees the same batches. Worker threads read and prepare the batches ahead of the training
step; an error in one is raised where the batches are consumed.
"""

from collections.abc import Iterator
from typing import Protocol

import grain
import numpy as np

from jldm.data.order import batches_for
from jldm.data.preprocessing import preprocess

# Flip decisions get their own Philox stream, apart from the sample order's.
_FLIP_STREAM = 0x466C6970


class Source(Protocol):
    def __len__(self) -> int: ...

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ArraySource:
    """Arrays in memory as a source: images [N, ...] (any dtype), labels [N]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[idx], self.labels[idx]


def flips(seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Which rows of step's batch [shape] are mirrored: bool, a pure function of (seed, step)."""
    key = np.array([seed % (1 << 64), (step ^ _FLIP_STREAM) % (1 << 64)], np.uint64)
    return np.random.Generator(np.random.Philox(key=key)).random(shape) < 0.5


class Pixels:
    """A split's records (records.Records) as model inputs: images bilinearly resized to
    resolution, float32 in [-1, 1], prepared per batch where they are read."""

    def __init__(self, records: Source, resolution: int):
        self.records, self.resolution = records, resolution

    def __len__(self) -> int:
        return len(self.records)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.records.rows(idx)
        return preprocess(images, self.resolution), labels


def stream(
    source: Source,
    *,
    seed: int,
    batch_size: int,
    steps_per_call: int,
    start: int,
    stop: int,
    random_flip: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 4,
    prefetch: int = 2,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(step, images [k, b, ...], labels [k, b]) for step = start, start + k, ... < stop.

    k = steps_per_call fused steps, b = batch_size / process_count rows of this process.
    random_flip mirrors about half of the rows left-right, by (seed, step). threads read (and
    prepare, see Pixels) batches ahead. A source with a draw method gets each row's global
    stream position, step * batch_size + its place in the global batch, to draw by.
    """
    k, n = steps_per_call, len(source)
    draw = getattr(source, "draw", None)

    def load(step: int) -> tuple[int, np.ndarray, np.ndarray]:
        idx = batches_for(seed, step, k, batch_size, n, process_index, process_count)
        b = idx.shape[1]
        images, labels = source.rows(idx.reshape(-1))
        images = images.reshape(*idx.shape, *images.shape[1:])
        if draw is not None:
            steps = np.arange(step, step + k, dtype=np.int64)[:, None]
            images = draw(images, seed, steps * batch_size + process_index * b + np.arange(b))
        if random_flip:  # drawn for the global batch: the same flips for any process count
            mirror = flips(seed, step, (k, batch_size))[
                :, process_index * b : (process_index + 1) * b
            ]
            images = np.where(mirror[..., None, None, None], images[..., ::-1, :], images)
        return step, images, labels.reshape(idx.shape)

    steps = grain.MapDataset.range(start, stop, k).map(load)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    return iter(steps.to_iter_dataset(options))
