"""The sample order: a pure function of (seed, step), so a resumed run sees the same batches.

The stream is epoch 0's permutation of range(N), then epoch 1's, and so on, each seeded by
(seed, epoch). Global batch `step` is stream positions [step * B, (step + 1) * B), which may
straddle two epochs; process p of P takes the p-th contiguous B / P slice of it.
"""

from __future__ import annotations

import functools

import numpy as np

from jldm.errors import UserError

_U64 = 1 << 64


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Permutation of range(N) for one epoch: int64 [N], read-only because it is cached."""
    # Philox takes (seed, epoch) as its 128-bit key directly, so every epoch of every seed gets
    # its own stream without any seed mixing that could collide.
    key = np.array([seed % _U64, epoch % _U64], dtype=np.uint64)
    perm = np.random.Generator(np.random.Philox(key=key)).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def _check(batch_size: int, num_examples: int, process_index: int, process_count: int) -> int:
    """Validate the layout and return the per-process batch size."""
    if num_examples < 1:
        raise UserError("the dataset split is empty: pick a split with at least one example")
    if batch_size < 1:
        raise UserError(f"train.batch_size={batch_size} must be at least 1")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count} does not exist")
    if batch_size % process_count:
        raise UserError(
            f"train.batch_size={batch_size} is not divisible by the {process_count} processes: "
            f"set it to a multiple of {process_count}"
        )
    return batch_size // process_count


def _indices_at(seed: int, positions: np.ndarray, num_examples: int) -> np.ndarray:
    """Dataset indices at stream positions int64 [...] -> int64 [...]."""
    epochs, offsets = np.divmod(positions, num_examples)
    out = np.empty(positions.shape, np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        out[here] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[here]]
    return out


def batch_indices(
    seed: int,
    step: int,
    batch_size: int,
    num_examples: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """This process's dataset indices for global batch `step`: int64 [batch_size // P]."""
    return batches_for(seed, step, 1, batch_size, num_examples, process_index, process_count)[0]


def batches_for(
    seed: int,
    start_step: int,
    num_steps: int,
    batch_size: int,
    num_examples: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Indices for steps start_step .. start_step + num_steps - 1: int64 [num_steps, B // P]."""
    local = _check(batch_size, num_examples, process_index, process_count)
    if start_step < 0 or num_steps < 0:
        raise ValueError(f"steps must be non-negative, got start {start_step}, count {num_steps}")
    steps = np.arange(start_step, start_step + num_steps, dtype=np.int64)
    positions = (
        steps[:, None] * batch_size
        + process_index * local
        + np.arange(local, dtype=np.int64)[None, :]
    )
    return _indices_at(int(seed), positions, num_examples)
