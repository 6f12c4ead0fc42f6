"""XLA's memory plan of the training loop's train step, compiled from abstract shapes only.

    python bench/memory_plan.py                                   # SD-1.5 shape, bf16, batch 32
    python bench/memory_plan.py --remat false,true --forms textbook,platform
    python bench/memory_plan.py --config configs/digits_ddpm.py --batch 64 --dtype float32

Nothing is allocated: the state and the batch are ShapeDtypeStructs, the step is lowered and
compiled for the local backend, and `compiled.memory_analysis()` gives the bytes XLA plans for
one device: arguments (params, EMA, AdamW moments, batch), outputs (the new state; aliased
with the donated arguments), temporaries (activations kept for the backward, gradients,
workspace) and generated code. One JSON line per case: each in bytes and GB, their sum
(sum_gb) and what the device holds at once (held_gb: the sum less the aliased outputs),
against --goal_gb.

On a CPU this is XLA:CPU's plan, which differs from a GPU's (other fusion, scheduling and
layouts, bf16 arithmetic widened to f32 on some ops, no cuDNN workspaces). --forms textbook
compiles the layers' textbook forms (the ones a GPU or TPU lowering takes) instead of the
XLA:CPU-tuned forms that a CPU lowering picks (jldm.nn.functional), so the program is the
accelerator's as far as jldm chooses it.
"""

import contextlib
import json
import os
import time

import timing

timing.add_root_to_path()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import jldm.nn.layers  # noqa: E402
import jldm.nn.unet  # noqa: E402
from jldm.build import build_model, make_optimizer, unet_state_shapes  # noqa: E402
from jldm.build.objectives import build_loss  # noqa: E402
from jldm.nn import functional  # noqa: E402
from jldm.train.sharding import batch_sharding, make_mesh, state_sharding  # noqa: E402
from jldm.train.step import make_train_step, make_update  # noqa: E402

config_flags.DEFINE_config_file(
    "config",
    os.path.join(timing.ROOT, "configs", "sd15_shape.py"),
    "A configs/*.py file.",
    lock_config=False,
)
flags.DEFINE_integer("batch", 32, "Global batch size.")
flags.DEFINE_string("dtype", "bfloat16", "model.dtype (compute dtype); empty: the config's.")
flags.DEFINE_list("remat", ["false", "true"], "model.remat values, one case each.")
flags.DEFINE_list(
    "forms", ["textbook"], "Layer forms: textbook (the accelerators') and/or platform (local)."
)
flags.DEFINE_float("goal_gb", 38.0, "The memory goal per device, in GB (1e9 bytes).")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS

# The names jldm.nn.layers and jldm.nn.unet import from jldm.nn.functional.
_FORMS = {
    (jldm.nn.layers, "silu"): "silu_textbook",
    (jldm.nn.layers, "group_norm"): "group_norm_textbook",
    (jldm.nn.layers, "upsample_conv"): "upsample_conv_textbook",
    (jldm.nn.unet, "silu"): "silu_textbook",
}
# For a program compiled once: LLVM's optimisations change the machine code, not the plan.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@contextlib.contextmanager
def layer_forms(forms: str):
    """Within the block, the UNet's layers use the textbook forms (forms="textbook") or the
    forms each backend's lowering picks (forms="platform")."""
    if forms not in ("textbook", "platform"):
        raise app.UsageError(f"--forms has {forms!r}: use textbook and/or platform")
    saved = {k: getattr(*k) for k in _FORMS}
    try:
        if forms == "textbook":
            for (module, name), textbook in _FORMS.items():
                setattr(module, name, getattr(functional, textbook))
        yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)


def train_step_args(config, batch: int):
    """The loop's jitted step and ShapeDtypeStructs of its (state, batches) on a mesh of all
    local devices: -> (step, state, batches)."""
    model = build_model(config)
    mesh = make_mesh()
    t = config.train
    tx = make_optimizer(t)
    shapes = unet_state_shapes(config, model)
    shardings = state_sharding(shapes, mesh, t.get("shard_params", False))
    update = make_update(build_loss(config, model), tx, t.ema_decay, False, shardings.params)
    step = make_train_step(update, mesh, shardings)
    state = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    k, res, ch = t.get("steps_per_call", 1), config.data.resolution, config.data.channels
    split = batch_sharding(mesh, batch_axis=1)
    batches = {
        "image": jax.ShapeDtypeStruct((k, batch, res, res, ch), jnp.float32, sharding=split),
        "label": jax.ShapeDtypeStruct((k, batch), jnp.int32, sharding=split),
    }
    return step, state, batches


def plan(config, batch: int, forms: str) -> dict:
    """Lower and compile the train step; -> XLA's memory plan and the seconds each took."""
    with layer_forms(forms):
        step, state, batches = train_step_args(config, batch)
        t0 = time.perf_counter()
        lowered = step.lower(state, batches)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=_FAST_COMPILE)
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    sizes = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "generated_code_bytes": int(m.generated_code_size_in_bytes),
    }
    total = sum(sizes[k] for k in ("argument_bytes", "output_bytes", "temp_bytes"))
    total += sizes["generated_code_bytes"]
    # What the device holds while the step runs: outputs aliased to the donated arguments
    # share their buffers, so they count once.
    held = total - sizes["alias_bytes"]
    params = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(state.params))
    return {
        "params": params,
        **sizes,
        **{f"{k[:-6]}_gb": round(v / 1e9, 3) for k, v in sizes.items()},
        "sum_gb": round(total / 1e9, 3),
        "held_gb": round(held / 1e9, 3),
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
    }


def main(_):
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    if FLAGS.dtype:
        config.model.dtype = FLAGS.dtype
    dev = jax.devices()[0]
    for forms in FLAGS.forms:
        for remat in FLAGS.remat:
            if remat not in ("true", "false"):
                raise app.UsageError(f"--remat has {remat!r}: use true and/or false")
            config.model.remat = remat == "true"
            rec = {
                "bench": "memory_plan",
                "config": config_flags.get_config_filename(FLAGS["config"]),
                "device": f"{dev.platform}:{dev.device_kind}",
                "devices": jax.device_count(),
                "jax": jax.__version__,
                "batch": FLAGS.batch,
                "dtype": config.model.dtype,
                "remat": config.model.remat,
                "forms": forms,
                **plan(config, FLAGS.batch, forms),
            }
            rec["goal_gb"] = FLAGS.goal_gb
            rec["under_goal"] = rec["held_gb"] < FLAGS.goal_gb
            line = json.dumps(rec)
            print(line, flush=True)
            if FLAGS.out:
                with open(FLAGS.out, "a") as f:
                    f.write(line + "\n")
            jax.clear_caches()


if __name__ == "__main__":
    app.run(main)
