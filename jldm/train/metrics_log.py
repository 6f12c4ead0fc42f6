"""Scalars to WORKDIR/metrics.jsonl and TensorBoard event files (WORKDIR/tb), which also get
images (sample grids during training) and text (the config).

A local metrics.jsonl is appended to and flushed on every logged step. On a cloud workdir
(gs://, s3://: see jldm.data.paths) an object cannot be appended to: the object's lines (read
when the writer opens, so a resumed run extends them) and the new ones are kept in memory, and
the whole object is uploaded again at most every flush_seconds and at close. A job killed
without closing loses at most the last flush_seconds of lines; readers always see a whole
object. The event files of a cloud workdir go the same way through etils.epath (uploaded whole
on each of tensorboardX's flushes, every 120 s, as tensorboardX's own gs:// writer does), so
they need no google-cloud-storage or boto3 and use the credentials the rest of the workdir does.
"""

import io
import json
import logging
import math
import sys
import time

import numpy as np

from jldm.data.paths import is_local, isfile, join, makedirs, read_text, write_bytes_atomic

logger = logging.getLogger(__name__)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch whenever it is installed (to accept its tensors), which costs
    every training start seconds; only Python floats are written here. A torch that is already
    imported stays as it is.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


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


class _ObjectRecordFile:
    """One tensorboardX event file on an object store: its bytes so far, uploaded whole on flush."""

    def __init__(self, path: str):
        self.path, self._buffer, self._pending = path, io.BytesIO(), True

    def write(self, data: bytes) -> None:
        self._buffer.write(data)
        self._pending = True

    def flush(self) -> None:
        if self._pending:
            write_bytes_atomic(self.path, self._buffer.getvalue())
            self._pending = False

    def close(self) -> None:
        self.flush()


class _ObjectRecordFactory:
    """tensorboardX's writer factory for one URI scheme, through etils.epath."""

    def open(self, path: str) -> _ObjectRecordFile:
        return _ObjectRecordFile(path)

    def directory_check(self, path: str) -> None:
        makedirs(path)


def _summary_writer(logdir: str, purge_step: int | None = None):
    """A tensorboardX SummaryWriter of logdir; a cloud logdir's event files go through epath.
    purge_step: see MetricWriter."""
    cls = _summary_writer_class()
    if not is_local(logdir):
        from tensorboardX import record_writer  # the package is imported (without torch) above

        record_writer.register_writer_factory(logdir.split(":", 1)[0], _ObjectRecordFactory())
    return cls(logdir, purge_step=purge_step)


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
    """Appends one JSON line per logged step and mirrors the scalars to TensorBoard.

    flush_seconds: on a cloud workdir, the least time between two uploads of metrics.jsonl
    (see the module docstring); a local file is flushed on every write.

    resume_step: the step of the checkpoint a training run starts from (0: from scratch), or
    None (a writer that only adds records). metrics.jsonl is first brought back to that step
    (rewind), and the new event file starts with tensorboardX's purge_step: a START event at
    step resume_step + 1 (0 from scratch), on which TensorBoard drops the events of that step
    and later that it read from the earlier event files. Those events stay in the earlier
    files: a reader of the raw event files still sees them.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        flush_seconds: float = 30.0,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        if enabled:
            purge = None
            if resume_step is not None:
                rewind(workdir, resume_step)
                purge = resume_step + 1 if resume_step > 0 else 0
            self._jsonl = _open_jsonl(join(workdir, "metrics.jsonl"), flush_seconds)
            self._tb = _summary_writer(join(workdir, "tb"), purge)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _finite_or_none(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An image [H, W, C] uint8 (C = 1 or 3) to TensorBoard."""
        if self.enabled:
            rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            self._tb.add_image(tag, rgb, step, dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        """Text (Markdown) to TensorBoard."""
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
