"""Scalars to WORKDIR/metrics.jsonl, and everything (scalars, images such as sample grids
during training, texts such as the config) to a metric writer: TensorBoard event files in
WORKDIR/tb by default, or the one config.train.writer names or a user passes (see
jldm.train.writers).

A local metrics.jsonl is appended to and flushed on every logged step. On a cloud workdir
(gs://, s3://: see jldm.data.paths) an object cannot be appended to: the object's lines (read
when the writer opens, so a resumed run extends them) and the new ones are kept in memory, and
the whole object is uploaded again at most every flush_seconds and at close. A job killed
without closing loses at most the last flush_seconds of lines; readers always see a whole
object. The event files of a cloud workdir go the same way (jldm.train.tb_writer).
"""

import json
import logging
import math
import time

import numpy as np

from jldm.data.paths import is_local, isfile, join, read_text, write_bytes_atomic
from jldm.train.writers import Writer, WriterFactory, open_writer

logger = logging.getLogger(__name__)


def _finite_or_none(value):
    """NaN and Inf as JSON null: strict JSON has no token for them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        value = float(value)
    return value if math.isfinite(value) else None


class ObjectLog:
    """A text file on an object store that grows by writes: the object's text when opened plus
    what was written since, uploaded whole by flush (at most every `every` seconds; the first
    flush at once) and by close."""

    def __init__(self, path: str, every: float):
        self.path, self.every = path, every
        self._parts = [read_text(path)] if isfile(path) else []
        self._uploaded = -math.inf
        self._pending = False

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._pending = True

    def flush(self) -> None:
        if self._pending and time.monotonic() - self._uploaded >= self.every:
            self._upload()

    def close(self) -> None:
        if self._pending:
            self._upload()

    def _upload(self) -> None:
        text = "".join(self._parts)
        self._parts = [text]
        write_bytes_atomic(self.path, text.encode())
        self._uploaded, self._pending = time.monotonic(), False


def rewind(workdir: str, step: int) -> None:
    """Bring WORKDIR/metrics.jsonl back to the checkpoint of step a run resumes from.

    Kept: the complete records (lines ending in a newline) of steps <= step; step 0 (no
    checkpoint: the run starts over) keeps none. Dropped: the records logged after that
    checkpoint, which the resumed run logs again, and a partial last line of a killed write,
    which would swallow the next record. A complete line that is no record (written from
    outside) is dropped with a warning naming it. The file is rewritten atomically (a renamed
    temporary file, one object upload), and only when something is dropped.
    """
    path = join(workdir, "metrics.jsonl")
    if not isfile(path):
        return
    lines = read_text(path).split("\n")
    kept = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: "" or a partial last line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            logged = int(record["step"])
        except (ValueError, TypeError, KeyError):
            logger.warning(f"{path}:{number} is no metrics record: dropped on resume")
            continue
        if step > 0 and logged <= step:
            kept.append(line + "\n")
    if len(kept) != len(lines) - 1 or lines[-1]:
        write_bytes_atomic(path, "".join(kept).encode())


def _open_jsonl(path: str, flush_seconds: float):
    """metrics.jsonl for appending: the local file, or an ObjectLog of the cloud object."""
    if is_local(path):
        return open(path, "a")  # noqa: SIM115
    return ObjectLog(path, flush_seconds)


class MetricWriter:
    """Appends one JSON line per logged step and passes scalars, images and texts to a writer.

    flush_seconds: on a cloud workdir, the least time between two uploads of metrics.jsonl
    (see the module docstring); a local file is flushed on every write.

    resume_step: the step of the checkpoint a training run starts from (0: from scratch), or
    None (a writer that only adds records). metrics.jsonl is first brought back to that step
    (rewind), and the writer is opened for it (TensorBoard's new event file starts with a
    purge_step: see jldm.train.tb_writer.TensorBoardWriter).

    writer: None (TensorBoard in WORKDIR/tb), a factory (workdir, resume_step) -> writer, such
    as jldm.train.writers.from_config(config), whose writer this one opens and closes, or a
    writer object, which close flushes and leaves open for its owner.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        flush_seconds: float = 30.0,
        resume_step: int | None = None,
        writer: WriterFactory | Writer | None = None,
    ):
        self.enabled = enabled
        if enabled:
            if resume_step is not None:
                rewind(workdir, resume_step)
            self._jsonl = _open_jsonl(join(workdir, "metrics.jsonl"), flush_seconds)
            self._owned = not hasattr(writer, "write_scalars")
            if writer is None:
                self._writer = open_writer("tensorboard", workdir, resume_step)
            elif self._owned:
                self._writer = writer(workdir, resume_step)
            else:
                self._writer = writer

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _finite_or_none(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        self._writer.write_scalars(step, scalars)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An image [H, W, C] uint8 (C = 1 or 3) to the writer."""
        if self.enabled:
            self._writer.write_images(step, {tag: image})

    def text(self, step: int, tag: str, text: str) -> None:
        """Text (Markdown) to the writer, where it takes texts."""
        if self.enabled and hasattr(self._writer, "write_texts"):
            self._writer.write_texts(step, {tag: text})

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._owned:
                self._writer.close()
            else:
                self._writer.flush()
