"""Time the UNet of a config: one evaluation (a sampling step) and the jitted train step.

    python bench/unet.py --config configs/sd15_shape.py --batch 32          # on a GPU
    python bench/unet.py --config configs/digits_ddpm.py --batch 128         # CPU-sized
    python bench/unet.py --config configs/sd15_shape.py --config.model.remat=True

Prints one JSON line per case. Compile time is reported apart from the timed calls, which
are warm (warm-up calls excluded), blocked on with jax.block_until_ready, and summarised by
their median. FLOPs come from XLA's cost analysis of the compiled program; peak memory from
the device's allocator where the backend reports one (GPU/TPU; the CPU reports none), and
XLA's own buffer plan (memory_analysis) everywhere. Inputs are random and stay on the device,
so the figures are the model's, without data loading.
"""

import time

import timing

timing.add_root_to_path()

import jax  # noqa: E402
import jldm_cases as cases  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jldm.build.model import build_model, init_params  # noqa: E402
from jldm.train.sharding import check_batch, make_mesh  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's train.batch_size).")
flags.DEFINE_list("cases", ["eval", "train"], "Cases to run, in order: eval, train.")
flags.DEFINE_integer("repeats", 10, "Timed calls per case (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling, before timing.")
flags.DEFINE_bool(
    "compile_only",
    False,
    "Compile abstract inputs and report FLOPs and XLA's memory plan; allocates no params.",
)
flags.DEFINE_bool(
    "lower_only",
    False,
    "Trace abstract inputs and report FLOPs of the unoptimised program: allocates nothing, so "
    "the SD-1.5 shape can be checked on a laptop.",
)
flags.DEFINE_float("peak_tflops", 0.0, "The device's peak (e.g. 790 for bf16 on H100/H200).")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS


def _flops(compiled) -> float | None:
    """Total FLOPs of a compiled program by XLA's cost analysis (a dict, or a list of one)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _xla_memory(compiled) -> dict:
    """XLA's buffer plan of a compiled program, bytes per device."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    return {
        "xla_argument_bytes": int(m.argument_size_in_bytes),
        "xla_output_bytes": int(m.output_size_in_bytes),
        "xla_alias_bytes": int(m.alias_size_in_bytes),
        "xla_temp_bytes": int(m.temp_size_in_bytes),
    }


def _residual_bytes(loss_fn, params, batch: dict) -> int | None:
    """Bytes of activations the backward pass keeps (jaxpr level, before XLA fuses any), e.g.
    to compare remat on and off without a GPU. None where jax does not offer the analysis."""
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:
        return None
    key = jax.random.PRNGKey(0)
    res = saved_residuals(lambda p, b: loss_fn(p, key, b)[0], params, batch)
    return sum(
        int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
        for a, why in res
        if not why.startswith("from the argument")  # inputs are held anyway
    )


def _bytes_per_device(shapes, shardings) -> int:
    """Bytes one device holds of a pytree placed with these shardings (no allocation)."""
    total = 0
    for s, sh in zip(
        jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(shardings), strict=True
    ):
        shard = sh.shard_shape(s.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(s.dtype).itemsize
    return total


def _compile(fn, *args) -> tuple[object, float, float]:
    """Trace+lower and compile fn for args. -> (compiled, lower seconds, compile seconds).

    With --lower_only the first is the lowered program and compile seconds are 0.
    """
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    if FLAGS.lower_only:
        return lowered, t1 - t0, 0.0
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def _report(base: dict, case: str, images: int, compiled, lower_s, compile_s, timed) -> dict:
    flops = _flops(compiled)
    if flops and not FLAGS.lower_only:
        # A compiled SPMD program is one device's share: the whole step is n times that.
        flops *= jax.device_count()
    rec = dict(base, case=case, lower_s=round(lower_s, 3), compile_s=round(compile_s, 3))
    if flops:
        rec["gflop_per_image"] = round(flops / images / 1e9, 4)
    if timed:
        rec.update({k: round(v, 6) if isinstance(v, float) else v for k, v in timed.items()})
        rec["images_per_s"] = round(images / timed["median_s"], 3)
        if flops:
            tflops = flops / timed["median_s"] / 1e12
            rec["tflops"] = round(tflops, 4)
            if FLAGS.peak_tflops > 0:
                rec["fraction_of_peak"] = round(tflops / FLAGS.peak_tflops, 4)
    if not FLAGS.lower_only:
        rec.update(_xla_memory(compiled))
    peak = cases.peak_bytes()
    if peak is not None:
        rec["peak_bytes"] = peak
    return rec


def bench_eval(config, model, mesh, batch: int, base: dict) -> dict:
    """One UNet evaluation at `batch` (what each sampling step costs)."""
    abstract = FLAGS.lower_only or FLAGS.compile_only
    fn, args = cases.eval_program(config, model, mesh, batch, abstract_params=abstract)
    compiled, lower_s, compile_s = _compile(fn, *args)
    timed = None
    if not abstract:
        timed = timing.measure(
            lambda: jax.block_until_ready(compiled(*args)), FLAGS.repeats, FLAGS.warmup
        )
    return _report(base, "eval", batch, compiled, lower_s, compile_s, timed)


def bench_train(config, model, mesh, batch: int, base: dict) -> dict:
    """The loop's jitted train step: k fused steps of forward, backward, clip, AdamW, EMA."""
    abstract = FLAGS.lower_only or FLAGS.compile_only
    prog = cases.train_program(config, model, mesh, batch, abstract_state=abstract)
    k = config.train.steps_per_call
    one = jax.tree_util.tree_map(lambda b: jax.ShapeDtypeStruct(b.shape[1:], b.dtype), prog.batches)
    residual = _residual_bytes(prog.loss_fn, prog.shapes.params, one)
    compiled, lower_s, compile_s = _compile(prog.step, prog.state, prog.batches)
    timed = None
    if not abstract:
        timed = timing.measure(cases.stepper(compiled, prog), FLAGS.repeats, FLAGS.warmup)
    rec = _report(base, "train", k * batch, compiled, lower_s, compile_s, timed)
    rec["state_bytes_per_device"] = _bytes_per_device(prog.shapes, prog.shardings)
    if residual is not None:
        rec["residual_bytes"] = residual
    if timed:
        rec["steps_per_s"] = round(k / timed["median_s"], 3)
    if k > 1:
        # XLA's cost analysis may count a while loop's body once, whatever its trip count.
        rec["flops_note"] = "steps_per_call>1: gflop_per_image may count one of the k steps"
    return rec


def main(_):
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/digits_ddpm.py")
    batch = FLAGS.batch or config.train.batch_size
    mesh = make_mesh()
    check_batch(batch, mesh)
    model = build_model(config)
    shapes = jax.eval_shape(
        lambda k: init_params(model, config, k), jax.random.PRNGKey(config.seed)
    )
    dev = jax.devices()[0]
    base = {
        "bench": "jldm",
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "device": f"{dev.platform}:{dev.device_kind}",
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "batch": batch,
        "steps_per_call": config.train.steps_per_call,
        "dtype": config.model.dtype,
        "remat": bool(config.model.get("remat", False)),
        "shard_params": bool(config.train.get("shard_params", False)),
        "params": sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes)),
    }
    runners = {"eval": bench_eval, "train": bench_train}
    for case in FLAGS.cases:
        if case not in runners:
            raise app.UsageError(f"--cases has {case!r}: use eval and/or train")
        timing.emit(runners[case](config, model, mesh, batch, base), FLAGS.out)
        jax.clear_caches()


if __name__ == "__main__":
    app.run(main)
