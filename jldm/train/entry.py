"""Train a config in a workdir: the task it names, through the one loop."""

import contextlib

import jax
import ml_collections

from jldm.build import ranges
from jldm.build.vae import check_config as check_vae_config
from jldm.data.paths import check_links
from jldm.runs import workdir as run_folder
from jldm.runs.config_io import check_config_change, write_config
from jldm.runs.kinds import kind_of
from jldm.train.checks import (
    check_free_space,
    check_run_files,
    check_sampling,
    check_sizes,
    check_structure,
    config_keys,
    faults_in,
    new_workdir,
)
from jldm.train.fit import check_section, fit
from jldm.train.writers import check_writer, flat_hparams, from_config


def train(
    config: ml_collections.ConfigDict, workdir: str, force: bool = False, writer=None
) -> bool:
    """Train config in workdir, resuming from its latest checkpoint.

    Toy densities, a VAE, latent diffusion (both stages) or pixel diffusion, by config. Returns
    True when training is complete, False when stopped early by SIGTERM (after writing a
    checkpoint); SIGINT (Ctrl-C) writes the checkpoint, then raises KeyboardInterrupt. Raises
    TrainingDiverged on a NaN/Inf step unless train.skip_nonfinite, without writing the
    poisoned state. Everything that can be refused is refused before the first
    write, and one process at a time trains in a workdir. writer: an object with the methods
    of jldm.train.writers.Writer that gets the metrics (and the config as hparams) instead of
    config.train.writer's writer; it is flushed, not closed. A section or key the config lacks
    is a UserError naming it.
    """
    with config_keys():
        return _train(config, workdir, force, writer)


def _train(config: ml_collections.ConfigDict, workdir: str, force: bool, writer) -> bool:
    check_structure(config)
    ranges.check_config(config)
    if writer is None:
        writer = from_config(config)
    else:
        check_writer(writer)
    check_section(config.train, "train")
    kind = kind_of(config)
    if kind == "latent":
        check_section(config.stage1, "stage1")
    if kind == "toy":
        from jldm.train.toy import check_config

        check_config(config)
    elif kind == "vae":
        check_vae_config(config)
        check_sizes(config)
    else:
        _check(config)
    main = jax.process_index() == 0
    if main:
        check_links(workdir, "workdir")
        run_folder.check_workdir(workdir)
        check_run_files(workdir)
        check_config_change(workdir, config, force)
    if kind == "toy":
        from jldm.train.toy import toy_task

        task = toy_task(config, workdir, writer)
        run = lambda: fit(task, workdir, writer)
    else:
        from jldm.train.inputs import load_training_images, training_source

        # Pixel and latent diffusion stream their split (stage 1 reads it into memory only when
        # it trains); the VAE takes it in memory.
        if kind == "vae":
            from jldm.train.vae import vae_task

            task = vae_task(config, workdir, load_training_images(config))
            run = lambda: fit(task, workdir, writer)
        elif kind == "latent":
            from jldm.train.ldm import fit_latent

            data = training_source(config)
            run = lambda: fit_latent(config, workdir, data, writer)
        else:
            from jldm.train.diffusion import diffusion_task

            task = diffusion_task(config, workdir, training_source(config))
            run = lambda: fit(task, workdir, writer)
    if main and kind != "latent":
        check_free_space(workdir, task.shapes)
    with faults_in(workdir), new_workdir(workdir) if main else contextlib.nullcontext():
        with run_folder.hold(workdir) if main else contextlib.nullcontext():
            if main:
                write_config(workdir, config, force)
                if hasattr(writer, "write_hparams"):  # the caller's own writer
                    writer.write_hparams(flat_hparams(config))
            return run().complete


def _check(config: ml_collections.ConfigDict) -> None:
    """What can be refused before the data is read."""
    from jldm.build.model import build_model
    from jldm.build.objectives import build_loss

    model = build_model(config)
    build_loss(config, model)
    check_sizes(config, model.unet)
    check_sampling(config)
