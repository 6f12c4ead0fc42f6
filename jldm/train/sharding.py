"""The device mesh and shardings: data parallel over every device (jit + NamedSharding)."""

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
