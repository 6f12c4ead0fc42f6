"""Training batches of an in-memory split: rows by (seed, step), this process's share only."""

from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from jldm.data import batches_for, load_split, preprocess
from jldm.errors import UserError
from jldm.train.sharding import to_global


def load_training_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """config.data's train split: images [N,R,R,C] in [-1, 1] and labels [N] int32."""
    d = config.data
    split = load_split(d.name, "train", d.data_dir, d.fashion_dir)
    if split.images.shape[-1] != d.channels or split.num_classes != d.num_classes:
        raise UserError(
            f"dataset {d.name!r} has {split.images.shape[-1]} channels and {split.num_classes} "
            f"classes: set data.channels and data.num_classes to match"
        )
    return preprocess(split.images, d.resolution), split.labels.astype(np.int32)


def array_batches(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    batch_size: int,
    steps_per_call: int,
    sharding: NamedSharding,
    cond_fn: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> Callable[[int, int], Iterator[dict]]:
    """inputs(start, stop): for each call, {"image": [k,B,...], "label": [k,B] or [k,B,L]}.

    The rows of step s depend only on (seed, s), so a resumed run sees the same data;
    cond_fn(step, labels) turns class ids into the model's conditions (captions' token ids).
    """

    def inputs(start: int, stop: int) -> Iterator[dict]:
        for step in range(start, stop, steps_per_call):
            idx = batches_for(
                seed,
                step,
                steps_per_call,
                batch_size,
                len(images),
                jax.process_index(),
                jax.process_count(),
            )
            y = labels[idx]
            if cond_fn is not None:
                y = cond_fn(step, y)
            yield {"image": to_global(images[idx], sharding), "label": to_global(y, sharding)}

    return inputs
