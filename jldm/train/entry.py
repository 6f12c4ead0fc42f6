"""Train a config in a workdir: the task it names, through the one loop."""

import jax
import ml_collections

from jldm.build.model import is_latent
from jldm.train.config_io import write_config
from jldm.train.fit import check_section, fit


def train(config: ml_collections.ConfigDict, workdir: str, force: bool = False) -> bool:
    """Train config in workdir, resuming from its latest checkpoint.

    Toy densities, latent diffusion (both stages) or pixel diffusion, by config. Returns True
    when training is complete, False when stopped early by SIGTERM/SIGINT (after writing a
    checkpoint). Raises TrainingDiverged on a NaN/Inf step unless train.skip_nonfinite, without
    writing the poisoned state.
    """
    check_section(config.train, "train")
    if is_latent(config):
        check_section(config.stage1, "stage1")
    if config.data.name.startswith("toy"):
        from jldm.train.toy import toy_task

        task = toy_task(config, workdir)
        write_config(workdir, config, force)
        return fit(task, workdir).complete
    from jldm.train.inputs import load_training_images

    _check(config)
    data = load_training_images(config)
    if is_latent(config):
        from jldm.train.ldm import fit_latent

        if jax.process_index() == 0:
            write_config(workdir, config, force)
        return fit_latent(config, workdir, data).complete
    from jldm.train.diffusion import diffusion_task

    task = diffusion_task(config, workdir, data)
    if jax.process_index() == 0:
        write_config(workdir, config, force)
    return fit(task, workdir).complete


def _check(config: ml_collections.ConfigDict) -> None:
    """What can be refused before the data is read."""
    from jldm.build.model import build_model
    from jldm.build.objectives import build_loss

    build_loss(config, build_model(config))
