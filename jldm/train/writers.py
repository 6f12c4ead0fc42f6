"""Metric writers in the shape of clu.metric_writers.MetricWriter: write_scalars(step, {name:
value}), write_images(step, {name: [H, W, C] uint8}), write_texts(step, {name: text}),
write_hparams({name: value}), flush(), close().

Training writes every logged step to WORKDIR/metrics.jsonl (always: jldm.train.metrics_log) and
to one writer, which config.train.writer picks: "tensorboard" (the default: event files in
WORKDIR/tb), "wandb" (Weights & Biases, imported only then: pip install 'jldm[wandb]'; its
project is $WANDB_PROJECT or "jldm", its local files go where wandb puts them, $WANDB_DIR or
./wandb) or "none". jldm.train(config, workdir, writer=obj) takes any object with these methods
instead (a clu MetricWriter, or a Writer subclass): the run writes to it and flushes it, and its
owner closes it.
"""

import os
import secrets
from collections.abc import Callable

import ml_collections
import numpy as np

from jldm.data.paths import isfile, join, read_text, resolve, write_text_atomic
from jldm.errors import UserError, missing_extra

WRITERS = ("tensorboard", "wandb", "none")
METHODS = ("write_scalars", "write_images", "write_hparams", "flush", "close")


class Writer:
    """The interface, doing nothing (the "none" writer); subclasses override what they keep."""

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> [H, W, C] uint8, C = 1 or 3."""

    def write_texts(self, step: int, texts: dict[str, str]) -> None:
        pass

    def write_hparams(self, hparams: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# (workdir, resume_step) -> an open Writer; resume_step as jldm.train.metrics_log.MetricWriter's.
WriterFactory = Callable[[str, "int | None"], Writer]


class WandbWriter(Writer):
    """One Weights & Biases run per workdir: a resumed run continues it (its id is kept in
    WORKDIR/wandb_run_id). Every row carries the training step as "step", the x axis of every
    metric, so rows that a resumed run logs again for earlier steps are kept, not dropped."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        import wandb

        id_file = join(workdir, "wandb_run_id")
        if resume_step != 0 and isfile(id_file):
            run_id = read_text(id_file).strip()
        else:
            run_id = secrets.token_hex(4)  # wandb ids: letters and digits
            write_text_atomic(id_file, run_id + "\n")
        name = "/".join(resolve(workdir).rstrip("/").split("/")[-2:])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "jldm"),
            name=name,
            id=run_id,
            resume="allow",
            reinit="create_new",  # a notebook's own wandb run stays as it is
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self._image = wandb.Image

    def write_scalars(self, step, scalars):
        self.run.log({**scalars, "step": step})

    def write_images(self, step, images):
        gray = lambda v: v[..., 0] if v.shape[-1] == 1 else v  # PIL takes gray as [H, W]
        shown = {k: self._image(gray(np.asarray(v))) for k, v in images.items()}
        self.run.log({**shown, "step": step})

    def write_texts(self, step, texts):
        self.run.log({**texts, "step": step})

    def write_hparams(self, hparams):
        self.run.config.update(hparams, allow_val_change=True)

    def close(self):
        self.run.finish()


def check_writer(writer) -> None:
    """Refuse an object that lacks a writer's methods, naming them."""
    missing = [m for m in METHODS if not callable(getattr(writer, m, None))]
    if missing:
        raise UserError(
            f"writer={type(writer).__name__} has no {', '.join(missing)}: pass an object with "
            f"{', '.join(METHODS)} (see jldm.train.writers.Writer)"
        )


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def flat_hparams(config: ml_collections.ConfigDict) -> dict:
    """config as {"section.key": value}; tuples (nested too) as lists."""
    out = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = _plain(v)

    walk(config.to_dict(), "")
    return out


def writer_choice(config: ml_collections.ConfigDict) -> str:
    """config.train.writer (default "tensorboard"), refused at once when unknown or when its
    package is missing."""
    choice = config.train.get("writer", "tensorboard")
    if choice not in WRITERS:
        raise UserError(
            f"train.writer={choice!r} is none of {' | '.join(WRITERS)}; fix --config.train.writer"
        )
    if choice == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise missing_extra(e, "train.writer='wandb'", "wandb") from e
    return choice


def open_writer(choice: str, workdir: str, resume_step: int | None = None) -> Writer:
    """The writer named choice (one of WRITERS) for the run in workdir."""
    if choice == "tensorboard":
        from jldm.train.tb_writer import TensorBoardWriter

        return TensorBoardWriter.for_run(workdir, resume_step)
    if choice == "wandb":
        return WandbWriter(workdir, resume_step)
    return Writer()


def from_config(config: ml_collections.ConfigDict) -> WriterFactory:
    """The factory of config.train.writer's writers, each given the config as hparams when it
    opens."""
    choice, hparams = writer_choice(config), flat_hparams(config)

    def factory(workdir: str, resume_step: int | None = None) -> Writer:
        writer = open_writer(choice, workdir, resume_step)
        writer.write_hparams(hparams)
        return writer

    return factory
