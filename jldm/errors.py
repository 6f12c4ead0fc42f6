"""The one exception type for user mistakes: the CLIs print its message on one line, exit 2.
Faults of the machine (an OSError, a library's exception for one) get their line here too."""

import errno


class UserError(Exception):
    """A mistake in the user's input (config, paths, data); the message names the fix."""


class MissingExtra(UserError, ImportError):
    """A feature's optional package is not installed; the message names the extra that brings
    it. An ImportError too, so code that tries an import and falls back still can."""


def missing_extra(error: ImportError, feature: str, extra: str = "sd") -> MissingExtra:
    """The one-line error for error, the failed import of feature's package: which package,
    and the pip command of the jldm extra that installs it."""
    package = (error.name or "").partition(".")[0] or str(error)
    return MissingExtra(
        f"{feature} needs {package}, which is not installed: pip install 'jldm[{extra}]'"
    )


# What to do about an OSError, by its errno (the default: check the path).
_OS_FIXES = {
    errno.ENOSPC: "free some space there, or pick another folder, and rerun",
    errno.EDQUOT: "free some space there, or pick another folder, and rerun",
    errno.EISDIR: "a folder stands where a file should be: move it away and rerun",
    errno.ENOTDIR: "a file stands where a folder should be: move it away and rerun",
    errno.ELOOP: "symbolic links there point at each other: fix the link",
    errno.ENOENT: "it does not exist (or is a link to nothing): fix the path",
    errno.EACCES: "check its permissions, or pick a folder you can write",
    errno.EPERM: "check its permissions, or pick a folder you can write",
    errno.EROFS: "the filesystem is read-only: pick another folder",
}


def os_error_line(e: OSError) -> str:
    """The one-line message of an OSError a command cannot recover from: the path (a rename's
    target), the cause and the fix."""
    path = e.filename2 or e.filename
    cause = e.strerror or str(e) or type(e).__name__
    return f"{path if path else 'a file operation'}: {cause}: {os_error_fix(e.errno)}"


def os_error_fix(code: int | None) -> str:
    """What to do about the OSError of errno code."""
    return _OS_FIXES.get(code, "check the path and rerun")


def first_line(e: BaseException) -> str:
    """type: the first line of e's message, without TensorStore's spec dump."""
    lines = str(e).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec=")[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
