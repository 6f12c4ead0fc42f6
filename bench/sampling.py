"""Time jldm's samplers (one lax.scan each, under jit) drawing a batch of class-conditional images.

    python bench/sampling.py --config configs/digits_ddpm.py                 # 500 images
    python bench/sampling.py --config configs/digits_ddpm.py --num 100 --cases ddim50
    python bench/sampling.py --workdir runs/demo                            # a trained run

Cases: ddimN (DDIM with N steps, eta 0) and ddpm (ancestral, all T steps of the schedule),
e.g. --cases ddim50,ddpm. Prints one JSON line per case: compile time apart, then the median
seconds of warm calls (each with a fresh key, blocked on) and images per second. Params are a
random init of the config's model unless --workdir names a trained run (its EMA params).
"""

import time

import timing

timing.add_root_to_path()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jldm import api  # noqa: E402
from jldm.build import samplers  # noqa: E402
from jldm.build.model import build_model, init_params  # noqa: E402
from jldm.build.noise import build_schedule  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", "", "A trained run to sample from instead of a random init.")
flags.DEFINE_integer("num", 500, "Images per call; labels cycle through the classes.")
flags.DEFINE_list("cases", ["ddim50", "ddpm"], "ddimN for N DDIM steps, ddpm for all T steps.")
flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance scale (1: conditional only).")
flags.DEFINE_integer("repeats", 3, "Timed calls per case (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed calls after compiling, before timing.")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS


def _run() -> api.Loaded:
    if FLAGS.workdir:
        return api.load(FLAGS.workdir)
    config = FLAGS.config
    if config is None:
        raise app.UsageError("pass --config (a random init of its model) or --workdir")
    model = build_model(config)
    params = jax.jit(lambda k: init_params(model, config, k))(jax.random.PRNGKey(config.seed))
    return api.Loaded(config, model, params, build_schedule(config), 0)


def _case(name: str) -> tuple[str, int | None]:
    if name == "ddpm":
        return "ddpm", None  # the sampler's default: every timestep of the schedule
    if name.startswith("ddim") and name[4:].isdigit():
        return "ddim", int(name[4:])
    raise app.UsageError(f"--cases has {name!r}: use ddimN (e.g. ddim50) or ddpm")


def main(_):
    logging.set_verbosity(logging.ERROR)
    run = _run()
    config = run.config
    labels = np.arange(FLAGS.num) % config.data.num_classes
    dev = jax.devices()[0]
    base = {
        "bench": "jldm",
        "config": FLAGS.workdir or config_flags.get_config_filename(FLAGS["config"]),
        "device": f"{dev.platform}:{dev.device_kind}",
        "jax": jax.__version__,
        "images": FLAGS.num,
        "guidance": FLAGS.guidance,
        "dtype": config.model.dtype,
    }
    for name in FLAGS.cases:
        sampler, steps = _case(name)
        if steps is None:
            steps = samplers.get(sampler).default_steps(config)
        go = api.make_generator(run, labels, sampler=sampler, steps=steps, guidance=FLAGS.guidance)
        t0 = time.perf_counter()
        compiled = go.fn.lower(*go.args(jax.random.PRNGKey(0))).compile()
        compile_s = time.perf_counter() - t0
        keys = iter(range(1, 1 + FLAGS.warmup + FLAGS.repeats))
        timed = timing.measure(
            lambda: jax.block_until_ready(compiled(*go.args(jax.random.PRNGKey(next(keys))))),  # noqa: B023
            FLAGS.repeats,
            FLAGS.warmup,
        )
        nfe = samplers.nfe(config, sampler, steps, FLAGS.guidance)
        rec = dict(base, case=f"sample_{name}", nfe=nfe, compile_s=round(compile_s, 3))
        rec.update({k: round(v, 6) if isinstance(v, float) else v for k, v in timed.items()})
        rec["images_per_s"] = round(FLAGS.num / timed["median_s"], 3)
        timing.emit(rec, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
