"""Local or cloud paths: workdirs, data_dirs and sample folders may be gs:// (or s3://, ...).

A path with a URI scheme is kept as given (never made absolute, which would turn gs://b/x into
/cwd/gs:/b/x) and reaches Orbax and TFDS unchanged; jldm's own small files go through
etils.epath there. A local path goes through the OS, which can lock files (flock) and rename
them atomically (os.replace); an object store has neither, but an object upload is atomic:
readers see the old object or the new one, never part of it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
from collections.abc import Callable
from typing import BinaryIO

from etils import epath

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


def as_epath(path: str | os.PathLike) -> epath.Path:
    """The epath of path: local or cloud."""
    return epath.Path(os.fspath(path))


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else as_epath(path).is_dir()


def isfile(path: str) -> bool:
    return os.path.isfile(path) if is_local(path) else as_epath(path).is_file()


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else as_epath(path).exists()


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        as_epath(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names in folder path."""
    if is_local(path):
        return os.listdir(path)
    return [p.name for p in as_epath(path).iterdir()]


def remove(path: str) -> None:
    if is_local(path):
        os.remove(path)
    else:
        as_epath(path).unlink()


def rename(src: str, dst: str) -> None:
    """Move file or folder src to dst: os.replace locally; on an object store a copy of each
    object then its removal (not atomic: a reader may see both for a moment)."""
    if is_local(src):
        os.replace(src, dst)
    else:
        as_epath(src).rename(dst)


def read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(path, "rb") as f:
            return f.read()
    return as_epath(path).read_bytes()


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a binary file that becomes path only once write returned: locally a
    temporary file in path's folder renamed over path (os.replace), to a cloud path one object
    upload of what write wrote (in memory). Should write (or the disk) fail, path keeps what it
    held before and no temporary file is left behind."""
    if not is_local(path):
        buffer = io.BytesIO()
        write(buffer)
        as_epath(path).write_bytes(buffer.getvalue())
        return
    folder, name = os.path.split(path)
    # A hidden name of its own (not the file's name until done), created exclusively.
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{name}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
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
