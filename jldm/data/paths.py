"""Local or cloud paths: workdirs, data_dirs and sample folders may be gs:// (or s3://, ...).

A path with a URI scheme is kept as given (never made absolute, which would turn gs://b/x into
/cwd/gs:/b/x) and reaches Orbax and TFDS unchanged; jldm's own small files go through
etils.epath there. A local path goes through the OS, which can lock files (flock) and rename
them atomically (os.replace); an object store has neither, but an object upload is atomic:
readers see the old object or the new one, never part of it. A store that cannot be reached
(its filesystem package missing, no network, no credentials) is a UserError naming the path,
never a path that "does not exist".
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

from etils import epath

from jldm.temporaries import pending, temporary

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path: str | os.PathLike) -> bool:
    """path is on this machine's filesystem (no URI scheme, or file://)."""
    text = os.fspath(path)
    return not _SCHEME.match(text) or text.startswith("file://")


def resolve(path: str | os.PathLike) -> str:
    """A local path made absolute (~ expanded); a cloud path as given, without a trailing /."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_local(text):
        return os.path.abspath(os.path.expanduser(text))
    return text.rstrip("/")


def join(path: str | os.PathLike, *parts: str) -> str:
    """path / parts, for local and cloud paths alike."""
    path = os.fspath(path)
    return os.path.join(path, *parts) if is_local(path) else "/".join([path.rstrip("/"), *parts])


def dirname(path: str | os.PathLike) -> str:
    """The folder holding path; a cloud path's stops at its bucket (gs://b/x -> gs://b)."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.dirname(path)
    scheme, rest = path.rstrip("/").split("://", 1)
    return f"{scheme}://{rest.rsplit('/', 1)[0]}"


def _through_tensorflow() -> bool:
    """Whether epath reaches cloud paths through TensorFlow's gfile rather than fsspec."""
    from etils.epath import gpath

    return bool(getattr(gpath, "_is_tf_installed", lambda: False)())


def _filesystem_class(path: str):
    """The fsspec class of a cloud path's scheme (None through TensorFlow); a UserError when its
    package is not installed, instead of the traceback of the first access."""
    import fsspec

    from jldm.errors import UserError

    if _through_tensorflow():
        return None
    scheme = path.split("://", 1)[0]
    try:
        return fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        raise UserError(f"cannot reach {path}: {e} (pip install it)") from None
    except ValueError:
        raise UserError(f"cannot reach {path}: no filesystem knows {scheme}://") from None


@contextlib.contextmanager
def reaching(path: str) -> Iterator[None]:
    """A cloud operation on path inside: a failure to reach the store (no network, no
    credentials) as a UserError naming path; FileNotFoundError passes, for callers to judge."""
    from jldm.errors import UserError, first_line

    try:
        yield
    except (UserError, FileNotFoundError):
        raise
    except Exception as e:
        raise UserError(
            f"cannot reach {path} ({first_line(e)}): check the network and the credentials"
        ) from None


def as_epath(path: str | os.PathLike) -> epath.Path:
    """The epath of path: local or cloud (whose filesystem package must be installed)."""
    path = os.fspath(path)
    if not is_local(path):
        _filesystem_class(path)
    return epath.Path(path)


def _kind(path: str) -> str | None:
    """A cloud path's type ("file" or "directory"), None when nothing is there. fsspec's own
    exists and isdir answer False when the store cannot be reached; its info raises."""
    import fsspec

    if _filesystem_class(path) is None:
        p = as_epath(path)
        return "directory" if p.is_dir() else "file" if p.exists() else None
    with reaching(path):
        fs, inner = fsspec.core.url_to_fs(path)
        try:
            return fs.info(inner)["type"]
        except FileNotFoundError:
            return None


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else _kind(path) == "directory"


def isfile(path: str) -> bool:
    return os.path.isfile(path) if is_local(path) else _kind(path) == "file"


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _kind(path) is not None


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        with reaching(path):
            as_epath(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names in folder path."""
    if is_local(path):
        return os.listdir(path)
    with reaching(path):
        return [p.name for p in as_epath(path).iterdir()]


def remove(path: str) -> None:
    if is_local(path):
        os.remove(path)
    else:
        with reaching(path):
            as_epath(path).unlink()


def rename(src: str, dst: str) -> None:
    """Move file or folder src to dst: os.replace locally; on an object store a copy of each
    object then its removal (not atomic: a reader may see both for a moment)."""
    if is_local(src):
        os.replace(src, dst)
    else:
        with reaching(src):
            as_epath(src).rename(dst)


def read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with reaching(path):
        return as_epath(path).read_bytes()


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a binary file that becomes path only once write returned: locally a
    temporary file in path's folder renamed over path (os.replace), to a cloud path one object
    upload of what write wrote (in memory). Should write (or the disk) fail, path keeps what it
    held before and no temporary file is left behind. Inside jldm.temporaries.together()
    the rename (or the upload) waits for the end of the block."""
    waiting = pending()
    if not is_local(path):
        buffer = io.BytesIO()
        write(buffer)

        def upload() -> None:
            with reaching(path):
                as_epath(path).write_bytes(buffer.getvalue())

        if waiting is None:
            upload()
        else:
            waiting.append((path, upload))
        return
    tmp = temporary(path)
    try:
        with open(tmp, "xb") as f:  # created exclusively
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if waiting is not None:
            waiting.append((path, tmp))
            return
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # a failed write of an open file names no path: name the output
        elif isinstance(e, OSError) and e.filename == tmp:
            e.filename = path
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write path so that a reader never sees part of it, and a failed write leaves its old
    bytes: see write_atomic."""
    write_atomic(path, lambda f: f.write(data))


def read_text(path: str) -> str:
    """The UTF-8 text of path."""
    return read_bytes(path).decode()


def write_text_atomic(path: str, text: str) -> None:
    """write_bytes_atomic of text as UTF-8."""
    write_bytes_atomic(path, text.encode())


def check_links(path: str, what: str) -> None:
    """Refuse a local path that is, or lies below, a symbolic link to nothing or a link loop
    (it would neither exist nor be creatable), naming the link."""
    from jldm.errors import UserError

    if not is_local(path):
        return
    current = os.sep
    for part in os.path.abspath(os.path.expanduser(path)).split(os.sep)[1:]:
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            return
        if os.path.islink(current) and not os.path.exists(current):
            loop = False
            try:
                os.stat(current)
            except OSError as e:
                loop = e.errno == errno.ELOOP
            target = os.readlink(current)
            why = "a symbolic link loop" if loop else f"a link to {target}, which does not exist"
            raise UserError(f"{what} {path}: {current} is {why}: fix or remove the link")
