"""A checkpoint that could not be written (a full disk, a lost bucket) as one UserError.

Orbax writes in background threads and raises a failed write at the next save or wait, as the
ValueError of a TensorStore status whose text buries the cause in a spec dump; the line here
names the folder, the cause and the step the run resumes from. The failed step's temporary
folder is removed, so the disk holds what it held before that write began.
"""

import contextlib
import os
import re
import shutil
from collections.abc import Iterator

import jax
import orbax.checkpoint as ocp

from jldm.data.paths import is_local
from jldm.errors import UserError, first_line, os_error_fix

_OS_ERROR = re.compile(r"os_error_code='?(\d+)")
# Orbax's name for a step folder still being written.
_TMP = ".orbax-checkpoint-tmp"


class CheckpointNotWritten(UserError):
    """A checkpoint write failed; the checkpoints written before it are kept."""


def _cause(e: BaseException) -> tuple[str, str]:
    """(the cause of a failed write, what to do about it)."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno), os_error_fix(e.errno)
    if m := _OS_ERROR.search(str(e)):
        code = int(m.group(1))
        return os.strerror(code), os_error_fix(code)
    return first_line(e), "check the folder and rerun"


def _remove_partial(folder: str) -> None:
    """Delete the temporary folders of steps whose write failed (process 0, local folders)."""
    if jax.process_index() != 0 or not is_local(folder) or not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if _TMP in name:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


@contextlib.contextmanager
def checkpoint_writes(mngr: ocp.CheckpointManager) -> Iterator[None]:
    """Saves and waits of mngr inside: a failed write becomes a CheckpointNotWritten."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        folder = os.fspath(mngr.directory)
        cause, fix = _cause(e)
        with contextlib.suppress(Exception):
            mngr.wait_until_finished()  # no write in flight while its leftovers are removed
        _remove_partial(folder)
        with contextlib.suppress(Exception):
            mngr.reload()
        last = None
        with contextlib.suppress(Exception):
            last = mngr.latest_step()
        kept = (
            "no checkpoint was written: a rerun starts over"
            if last is None
            else f"step {last} is kept: a rerun resumes from it"
        )
        raise CheckpointNotWritten(
            f"cannot write a checkpoint in {folder} ({cause}): {fix} ({kept})"
        ) from None
