"""The run folder: checked before anything is written, and held by one training process at a time.

The hold is an exclusive flock on WORKDIR/lock, which the kernel releases when its process ends,
killed or not, so no stale lock outlives a run. The file keeps the holder's pid and host, which
a second writer's error names.
"""

import contextlib
import fcntl
import os
import socket
import tempfile
import time

from jldm.errors import UserError

LOCK = "lock"


def check_writable_folder(path: str, what: str) -> None:
    """path is a folder this process can write to, or does not exist and can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a folder: move it away or pick another path")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(f"{what} {path} cannot be created: {probe} is a file")
    try:
        fd, name = tempfile.mkstemp(prefix=".jldm-write-probe-", dir=probe)
    except OSError as e:
        raise UserError(
            f"{what} {path} is not writable ({e.strerror} in {probe}): pick a writable folder"
        ) from None
    os.close(fd)
    os.remove(name)


def check_checkpoint_folder(path: str) -> None:
    """path, a run's checkpoint folder, is a folder if it exists."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(
            f"{path} is a file, not the run's checkpoint folder: move it away and rerun"
        )


def check_workdir(workdir: str) -> None:
    """A workdir train.py can use: a writable folder (or a new one) whose checkpoints is one too."""
    check_writable_folder(workdir, "--workdir")
    for sub in ("checkpoints", os.path.join("stage1", "checkpoints")):
        path = os.path.join(workdir, sub)
        check_checkpoint_folder(path)
        if os.path.isdir(path):
            check_writable_folder(path, "the checkpoint folder")


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def hold(workdir: str):
    """Hold workdir for this process; refuse at once if another process holds it."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{workdir} is in use by {_holder(path)}: wait for it to finish, stop it, or "
                "use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock
