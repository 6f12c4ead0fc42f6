"""Train a diffusion model: python train.py --config configs/digits_ddpm.py --workdir runs/x."""

import os

from absl import flags
from ml_collections import config_flags

from jldm.cli import run_main

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: config, checkpoints, logs, samples.")
flags.DEFINE_bool("force", False, "Reuse a workdir holding a run of another architecture.")
FLAGS = flags.FLAGS


def main() -> None:
    from jldm.errors import UserError
    from jldm.train.loop import run

    if FLAGS.config is None or FLAGS.workdir is None:
        raise UserError("train.py needs --config configs/NAME.py and --workdir DIR")
    workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    if run(FLAGS.config, workdir, force=FLAGS.force):
        print(f"trained: {workdir} (checkpoints in {workdir}/checkpoints)")


if __name__ == "__main__":
    run_main(main)
