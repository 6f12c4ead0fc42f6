"""The device mesh and shardings: data parallel (jit + NamedSharding), optional FSDP state."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jldm.errors import UserError

DATA = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices, axis name 'data'."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split axis `batch_axis` over the 'data' axis of the mesh."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise UserError(
            f"train.batch_size={batch_size} is not divisible by the {n} devices: "
            f"use a multiple of {n}"
        )


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows of a global batch -> one global jax.Array placed on the mesh."""
    return jax.make_array_from_process_local_data(sharding, local)


# Leaves below this many elements (biases, norms, small kernels) stay replicated: splitting
# them saves little memory and adds a collective each.
MIN_SHARD_SIZE = 2**14


def leaf_spec(shape: tuple[int, ...], n: int, min_size: int = MIN_SHARD_SIZE) -> PartitionSpec:
    """FSDP rule for one array: split its largest axis divisible by n over 'data', else none."""
    if n <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    # The largest axis gives the most even, contiguous shards; ties go to the last axis
    # (output features of a Dense or conv kernel).
    axes = sorted(range(len(shape)), key=lambda a: (shape[a], a), reverse=True)
    for a in axes:
        if shape[a] % n == 0:
            return PartitionSpec(*([None] * a), DATA)
    return PartitionSpec()


def state_sharding(tree, mesh: Mesh, shard: bool, min_size: int = MIN_SHARD_SIZE):
    """Shardings for a pytree of arrays (or ShapeDtypeStructs): FSDP by leaf_spec, or replicated.

    Used for the whole TrainState: params, EMA and the optimizer's moments get the same split.
    """
    n = mesh.shape[DATA]
    rep = replicated(mesh)
    if not shard:
        return jax.tree_util.tree_map(lambda _: rep, tree)
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), n, min_size)), tree
    )
