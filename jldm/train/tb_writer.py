"""TensorBoard event files through tensorboardX, imported without torch; a cloud logdir's
files (gs://, s3://: see jldm.data.paths) go through etils.epath, uploaded whole on each of
tensorboardX's flushes (every 120 s, as tensorboardX's own gs:// writer does), so they need no
google-cloud-storage or boto3 and use the credentials the rest of the workdir does."""

import io
import sys

import numpy as np

from jldm.data.paths import is_local, join, makedirs, write_bytes_atomic
from jldm.train.writers import Writer


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


def summary_writer(logdir: str, purge_step: int | None = None):
    """A tensorboardX SummaryWriter of logdir; a cloud logdir's event files go through epath.
    purge_step: see TensorBoardWriter."""
    cls = _summary_writer_class()
    if not is_local(logdir):
        from tensorboardX import record_writer  # the package is imported (without torch) above

        record_writer.register_writer_factory(logdir.split(":", 1)[0], _ObjectRecordFactory())
    return cls(logdir, purge_step=purge_step)


class TensorBoardWriter(Writer):
    """The TensorBoard writer of jldm.train.writers: event files in logdir.

    purge_step: the new event file starts with tensorboardX's purge_step, a START event on
    which TensorBoard drops the events of that step and later that it read from the earlier
    event files (a resumed run logs them again); None: nothing is dropped. Those events stay in
    the earlier files: a reader of the raw event files still sees them.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        self._tb = summary_writer(logdir, purge_step)

    @classmethod
    def for_run(cls, workdir: str, resume_step: int | None = None) -> "TensorBoardWriter":
        """WORKDIR/tb of a run that starts from the checkpoint of resume_step (0: from scratch,
        None: a writer that only adds events): purge_step resume_step + 1, 0 from scratch."""
        purge = None if resume_step is None else resume_step + 1 if resume_step > 0 else 0
        return cls(join(workdir, "tb"), purge)

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)

    def write_images(self, step, images):
        for k, image in images.items():
            rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            self._tb.add_image(k, rgb, step, dataformats="HWC")

    def write_texts(self, step, texts):
        for k, text in texts.items():
            self._tb.add_text(k, text, step)  # Markdown

    def write_hparams(self, hparams):
        """hparams into the run's own event file (TensorBoard's HPARAMS tab): strings, numbers
        and booleans as they are, anything else as its str."""
        from tensorboardX.summary import hparams as hparams_summaries

        plain = {
            k: v if isinstance(v, str | bool | int | float) else str(v) for k, v in hparams.items()
        }
        for summary in hparams_summaries(plain, {}):
            self._tb.file_writer.add_summary(summary)

    def flush(self):
        self._tb.flush()

    def close(self):
        self._tb.close()
