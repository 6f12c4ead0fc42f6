"""Train a diffusion model: jldm-train --config configs/digits_ddpm.py --workdir runs/x
(python train.py in a clone).

Multi-host: run the same command on every host with --coordinator HOST:PORT (process 0's
address), --num_processes N and --process_id I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); under SLURM (srun with several tasks), Open MPI or on a multi-host TPU slice the
processes find each other by themselves (--distributed=off to stop that). Each process reads
its own slice of every batch.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from jldm import configs as configs_package
from jldm.cli import run_main
from jldm.host import keep_freed_memory, use_every_core

# Its own flags, not absl's global ones, so that tests can run main in-process (jldm.cli.run_cli).
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (configs/*.py), or the name of a bundled config (digits_ddpm, fashion_ldm, ...: "
    "the files of jldm/configs).",
    flag_values=FLAGS,
    lock_config=True,
)
flags.DEFINE_string(
    "workdir", None, "Run folder: config, checkpoints, logs, samples.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "force",
    False,
    "Reuse a workdir holding a run of another architecture; that run is moved whole into "
    "WORKDIR/replaced-TIMESTAMP.",
    flag_values=FLAGS,
)
flags.DEFINE_string("coordinator", None, "Multi-process: process 0's HOST:PORT.", flag_values=FLAGS)
flags.DEFINE_enum(
    "distributed",
    "",
    ["", "auto", "off"],
    "Multi-process without --coordinator: auto joins as JAX detects the cluster (SLURM, Open "
    "MPI, TPU slices), which a job of several tasks there does by default; off: one process.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "num_processes", None, "Multi-process: how many processes in all.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process, 0..num_processes-1.", flag_values=FLAGS
)


def _check_config_loaded() -> None:
    """config_flags defers a --config file's load error to its first use: surface it here."""
    from jldm.errors import UserError
    from jldm.train.checks import check_overrides, check_structure

    name = config_flags.get_config_filename(FLAGS["config"])
    try:
        FLAGS.config.get("train")
    except OSError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(
            f"cannot load --config {name} ({lines[-1] if lines else e}): pass a config file "
            "such as configs/digits_ddpm.py"
        ) from None
    try:
        check_structure(FLAGS.config)
    except UserError as e:
        raise UserError(f"--config {name}: {e}") from None
    check_overrides(FLAGS.config, config_flags.get_override_values(FLAGS["config"]))


def main(owns_process: bool = False) -> None:
    """Train FLAGS.config in FLAGS.workdir; owns_process: the script runs, not a test in-process."""
    from jldm.errors import UserError
    from jldm.train import distributed

    if FLAGS.config is None or FLAGS.workdir is None:
        raise UserError("train.py needs --config configs/NAME.py and --workdir DIR")
    _check_config_loaded()
    if owns_process and isinstance(FLAGS.config.train.get("batch_size"), int):
        use_every_core(max(FLAGS.config.train.batch_size, 1))
    # jax.distributed.initialize must come before anything starts a JAX backend.
    distributed.initialize(
        distributed.settings(
            FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, mode=FLAGS.distributed
        )
    )
    import jax

    from jldm.data.paths import resolve
    from jldm.runs.orbax_echoes import quiet_abandoned_reads_for_process
    from jldm.train.entry import train

    if owns_process:
        # Process-wide hooks: only a process that ends with this run may keep them.
        quiet_abandoned_reads_for_process()
        if jax.default_backend() == "cpu":
            keep_freed_memory()
    workdir = resolve(FLAGS.workdir)  # a cloud path (gs://...) is kept as given
    complete = train(FLAGS.config, workdir, force=FLAGS.force)
    if complete and jax.process_index() == 0:
        print(f"trained: {workdir} (checkpoints in {workdir}/checkpoints)")


def bundled_config(argv: list[str]) -> list[str]:
    """argv with --config NAME (no folder, no .py) replaced by the path of jldm/configs/NAME.py,
    so an installed jldm-train, which has no configs/ folder beside it, runs the bundled ones."""
    folder = os.path.dirname(os.path.abspath(configs_package.__file__))
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            at, name, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            at, name, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        path = os.path.join(folder, f"{name}.py")
        if name and os.sep not in name and not name.endswith(".py") and os.path.isfile(path):
            out[at] = prefix + path
    return out


def run() -> None:
    """The jldm-train command (and python train.py): parse sys.argv, run, exit with its code."""
    run_main(lambda: main(owns_process=True), bundled_config(sys.argv), flag_values=FLAGS)


if __name__ == "__main__":
    run()
