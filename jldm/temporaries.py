"""Temporary files on their way to their paths: their names, the ones a killed writer left, and
writes that land together.

A local file is written to a hidden temporary in its own folder, .tmp-PID-HOST-RANDOM-NAME, and
renamed over NAME when complete (jldm.data.paths.write_atomic). A writer killed mid-write
(SIGKILL, out of memory) leaves its temporary behind; the next write of NAME in that folder
removes those whose process no longer runs on this machine.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator

# (path, local temporary to rename over it | cloud upload to run) of the open together() block.
Pending = list[tuple[str, str | Callable[[], None]]]
_PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar("pending", default=None)


def _host() -> str:
    """A short tag of this machine: a folder shared between machines (NFS) or containers never
    reads one machine's process ids as another's."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temporary(path: str) -> str:
    """A fresh hidden name in path's folder for path on its way, once the temporaries of path
    that killed writers left are removed."""
    folder, name = os.path.split(path)
    remove_dead_temporaries(folder, name)
    return os.path.join(folder, f".tmp-{os.getpid()}-{_host()}-{secrets.token_hex(4)}-{name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or a pid that cannot be asked about
    return True


def remove_dead_temporaries(folder: str, name: str) -> None:
    """Remove the temporaries (files or folders) of name in folder whose process no longer runs
    on this machine. Those of a live process, or of another machine, are never touched."""
    ours = re.compile(rf"\.tmp-(\d+)-{_host()}-[0-9a-f]{{8}}-{re.escape(name)}")
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return
    for entry in entries:
        found = ours.fullmatch(entry)
        if found and not _alive(int(found[1])):
            stale = os.path.join(folder, entry)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)


def pending() -> Pending | None:
    """The open together() block's writes waiting for its end, None outside one."""
    return _PENDING.get()


@contextlib.contextmanager
def together() -> Iterator[None]:
    """The write_atomic calls inside become one write: each file goes to its temporary, and all
    become their paths only once the block ends without error. A failed write of any leaves
    every path as it was and no temporary behind, so files that belong together (a grid and its
    .npz) are never one new, one old. Locally only a crash between the renames (one folder,
    microseconds) could part them, and a rename that fails puts back the files replaced before
    it; cloud objects, which have no rename, are uploaded at the end
    one after the other, so a failed upload can still part those. A block inside a block joins
    the outer one."""
    if _PENDING.get() is not None:
        yield
        return
    writes: Pending = []
    token = _PENDING.set(writes)
    try:
        yield
    except BaseException:
        _discard(writes)
        raise
    finally:
        _PENDING.reset(token)
    _commit(writes)


def _discard(writes: Pending) -> None:
    for _, tmp in writes:
        if isinstance(tmp, str):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _commit(writes: Pending) -> None:
    """Rename every temporary over its path, then run the uploads. A folder standing at any
    path fails the whole set first, as os.replace would have failed for it alone. Each earlier
    file is kept under a second name (a hard link) until every rename is done, so a rename that
    fails puts the files already replaced back."""
    kept: list[tuple[str, str]] = []  # (path, its earlier file's second name)
    done: list[str] = []
    try:
        for path, tmp in writes:
            if isinstance(tmp, str) and os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        for path, tmp in writes:
            if isinstance(tmp, str) and os.path.isfile(path):
                second = temporary(path)
                try:
                    os.link(path, second)
                except OSError:  # a file system without hard links: no way back for this one
                    continue
                kept.append((path, second))
        for i, (path, tmp) in enumerate(writes):
            if isinstance(tmp, str):
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    e.filename, e.filename2 = path, None  # name the output, not its temporary
                    raise
                done.append(path)
                writes[i] = (path, lambda: None)
        for _, upload in writes:
            if not isinstance(upload, str):
                upload()
    except BaseException:
        _discard(writes)
        earlier = dict(kept)
        for path in done:
            if path in earlier:
                os.replace(earlier.pop(path), path)
            else:  # there was no file at path before
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        raise
    finally:
        for _, second in kept:
            with contextlib.suppress(FileNotFoundError):
                os.remove(second)
