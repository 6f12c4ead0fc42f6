"""What jldm.load holds of a run, from abstract shapes: the whole TrainState (params, EMA params,
both Adam moments) against the EMA params alone, which jldm.load's partial restore reads.

    python bench/load_memory.py --config configs/sd15_shape.py

Prints one JSON line. Nothing is allocated: jax.eval_shape of the TrainState gives every
leaf's shape and dtype, and bytes are their sizes.
"""

import timing

timing.add_root_to_path()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jldm.build import unet_state_shapes  # noqa: E402
from jldm.build.model import build_model  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
FLAGS = flags.FLAGS


def tree_bytes(tree) -> int:
    """Bytes of a pytree of shapes (jax.ShapeDtypeStruct or arrays)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def main(argv) -> None:
    del argv
    config = FLAGS.config
    state = unet_state_shapes(config, build_model(config))
    parts = {
        "params": tree_bytes(state.params),
        "ema_params": tree_bytes(state.ema_params),
        "opt_state": tree_bytes(state.opt_state),
    }
    whole = tree_bytes(state)
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    timing.emit(
        {
            "case": "load_memory",
            "parameters": count,
            "whole_state_gb": whole / 1e9,
            **{f"{k}_gb": v / 1e9 for k, v in parts.items()},
            "partial_restore_gb": parts["ema_params"] / 1e9,
            "fraction_read": parts["ema_params"] / whole,
        }
    )


if __name__ == "__main__":
    app.run(main)
