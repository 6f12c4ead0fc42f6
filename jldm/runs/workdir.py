"""The run folder: checked before anything is written, and held by one training process at a time.

A local workdir is held by an exclusive flock on WORKDIR/lock, which the kernel releases when
its process ends, killed or not, so no stale lock outlives a run. The file keeps the holder's
pid and host, which a second writer's error names.

A cloud workdir (gs://, s3://: see jldm.data.paths) cannot be locked: an object store has no
flock. There the hold writes the lock object WORKDIR/lock with the pid, host and start time,
warns that nothing stops a second writer, and removes the object when the run ends. A lock
object found at the start names a run that is still going or one that was killed (no kernel
releases it): the warning names it, and training goes on, so a preempted job restarts by
itself. Running one train.py per cloud workdir is the user's part.
"""

import contextlib
import fcntl
import os
import socket
import tempfile
import time
import warnings

from jldm.data.paths import (
    as_epath,
    dirname,
    exists,
    is_local,
    isdir,
    join,
    makedirs,
    read_bytes,
    remove,
)
from jldm.errors import UserError

LOCK = "lock"


def _check_cloud_folder(path: str, what: str) -> None:
    """The write probe of a cloud folder: an object written into it and removed."""
    p = as_epath(path)
    try:
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {path} is an object, not a folder: pick another path")
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".jldm-write-probe-{os.getpid()}-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except UserError:
        raise
    except Exception as e:  # each filesystem raises its own: OSError, gcsfs' HttpError, ...
        raise UserError(
            f"{what} {path} is not writable ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "pick a writable folder, or check the credentials for it"
        ) from None


def check_writable_folder(path: str, what: str) -> None:
    """path is a folder this process can write to, or does not exist and can be created."""
    if not is_local(path):
        return _check_cloud_folder(path, what)
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


def check_output_file(path: str, what: str) -> None:
    """path is a file a command can write at its end: not a folder, in a folder that exists
    (locally) and that this process can write to; checked before the command's work."""
    if isdir(path):
        raise UserError(f"{what} {path} is a folder: name a file")
    folder = dirname(path) if not is_local(path) else os.path.dirname(os.path.abspath(path))
    if is_local(path) and os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{what} {path}: {folder} is a file, not a folder: pick another path")
    if is_local(path) and not os.path.isdir(folder):
        raise UserError(f"{what} {path}: the folder {folder} does not exist: create it first")
    check_writable_folder(folder, f"the folder of {what}")


def check_checkpoint_folder(path: str) -> None:
    """path, a run's checkpoint folder, is a folder if it exists."""
    if exists(path) and not isdir(path):
        raise UserError(
            f"{path} is a file, not the run's checkpoint folder: move it away and rerun"
        )


def check_workdir(workdir: str) -> None:
    """A workdir train.py can use: a writable folder (or a new one) whose checkpoints is one too."""
    check_writable_folder(workdir, "--workdir")
    for sub in ("checkpoints", join("stage1", "checkpoints")):
        path = join(workdir, sub)
        check_checkpoint_folder(path)
        if isdir(path):
            check_writable_folder(path, "the checkpoint folder")


def _holder(path: str) -> str:
    try:
        text = read_bytes(path).decode(errors="replace").strip()
    except (OSError, FileNotFoundError):
        text = ""
    return text or "another process"


def _stamp() -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} on {socket.gethostname()} since {when}\n"


@contextlib.contextmanager
def _hold_cloud(workdir: str):
    path = join(workdir, LOCK)
    makedirs(workdir)
    found = _holder(path) if exists(path) else None
    mine = _stamp()
    note = (
        f"{workdir} is a cloud folder, which cannot be locked: nothing stops a second train.py "
        "from writing it too, so run one per workdir"
    )
    if found:
        note += f" ({path} names {found}: a run still going, or one that was stopped)"
    warnings.warn(note, stacklevel=3)
    as_epath(path).write_text(mine)
    try:
        yield
    finally:
        # Removed only when still ours: a second writer's object is left for it to name.
        with contextlib.suppress(Exception):
            if _holder(path) == mine.strip():
                remove(path)


@contextlib.contextmanager
def hold(workdir: str):
    """Hold workdir for this process; refuse at once if another process holds it (a local
    workdir), or warn that nothing can hold it (a cloud workdir, see the module docstring)."""
    if not is_local(workdir):
        with _hold_cloud(workdir):
            yield
        return
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
        os.write(fd, _stamp().encode())
        yield
    finally:
        os.close(fd)  # releases the flock
