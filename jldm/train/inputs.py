"""Training inputs: a dataset split streamed from disk, or arrays in memory, through one
pipeline (jldm.data.stream): rows by (seed, step), this process's share only, read ahead in
worker threads and placed on the devices as global arrays."""

from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from jldm.data import load_split, preprocess
from jldm.data.datasets import dataset_of
from jldm.data.sources import open_split
from jldm.data.stream import ArraySource, Pixels, Source, stream
from jldm.errors import UserError
from jldm.train.sharding import to_global


def _check_dataset(config: ml_collections.ConfigDict, channels: int, classes: int) -> None:
    d = config.data
    if channels != d.channels or classes != d.num_classes:
        raise UserError(
            f"dataset {d.name!r} has {channels} channels and {classes} classes: set "
            "data.channels and data.num_classes to match"
        )


def training_source(config: ml_collections.ConfigDict) -> Pixels:
    """config.data's train split, read by index at training resolution (nothing held in RAM)."""
    d = config.data
    records = open_split(dataset_of(d), "train")
    classes = records.num_classes or d.num_classes  # unnamed classes: trust the config
    _check_dataset(config, records.image_shape[-1], classes)
    return Pixels(records, d.resolution)


def load_training_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """config.data's train split in memory (the stage-1 autoencoder encodes all of it): images
    [N,R,R,C] in [-1, 1] and labels [N] int32."""
    d = config.data
    split = load_split(dataset_of(d), "train")
    _check_dataset(config, split.images.shape[-1], split.num_classes)
    return preprocess(split.images, d.resolution), split.labels.astype(np.int32)


def as_source(data: Source | tuple[np.ndarray, np.ndarray]) -> Source:
    """A source, or (images, labels) arrays in memory as one."""
    return ArraySource(*data) if isinstance(data, tuple) else data


def source_batches(
    data: Source | tuple[np.ndarray, np.ndarray],
    seed: int,
    batch_size: int,
    steps_per_call: int,
    sharding: NamedSharding,
    cond_fn: Callable[[int, np.ndarray], np.ndarray] | None = None,
    random_flip: bool = False,
    threads: int = 4,
) -> Callable[[int, int], Iterator[dict]]:
    """inputs(start, stop): for each call, {"image": [k,B,...], "label": [k,B] or [k,B,L]}.

    The rows of step s depend only on (seed, s), so a resumed run sees the same data;
    cond_fn(step, labels) turns class ids into the model's conditions (captions' token ids).
    """
    source = as_source(data)

    def inputs(start: int, stop: int) -> Iterator[dict]:
        batches = stream(
            source,
            seed=seed,
            batch_size=batch_size,
            steps_per_call=steps_per_call,
            start=start,
            stop=stop,
            random_flip=random_flip,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            threads=threads,
        )
        for step, images, labels in batches:
            y = labels if cond_fn is None else cond_fn(step, labels)
            yield {"image": to_global(images, sharding), "label": to_global(y, sharding)}

    return inputs


def array_batches(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    batch_size: int,
    steps_per_call: int,
    sharding: NamedSharding,
    cond_fn: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> Callable[[int, int], Iterator[dict]]:
    """source_batches of arrays in memory."""
    return source_batches((images, labels), seed, batch_size, steps_per_call, sharding, cond_fn)
