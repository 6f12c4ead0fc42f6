"""Shared CLI plumbing: absl flag parsing and user mistakes as one line with exit code 2."""

import os
import sys
import traceback
from collections.abc import Callable

from absl import flags, logging

from jldm.errors import UserError


def fail(message: str) -> None:
    """Print a one-line error and exit 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _last_overrides_win(argv: list[str]) -> list[str]:
    """Drop every --config.PATH=VALUE that a later one of the same PATH replaces.

    absl keeps the last value of a repeated flag, but ml_collections concatenates repeated
    tuple overrides ((1, 2) then (1, 3) gives (1, 2, 1, 3)); this makes tuples behave too.
    """
    last = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--config.") and "=" in arg:
            last[arg.split("=", 1)[0]] = i
    return [
        a
        for i, a in enumerate(argv)
        if not (a.startswith("--config.") and "=" in a and last[a.split("=", 1)[0]] != i)
    ]


def _config_code_error(e: Exception) -> str | None:
    """file:line and the exception when a config file's own code failed while loading, else None."""
    if isinstance(e, SyntaxError):
        return f"{e.filename}:{e.lineno}: {e.msg}"
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if f.filename != __file__
        and os.sep + "site-packages" + os.sep not in f.filename
        and not f.filename.startswith("<")
    ]
    if not frames:
        return None
    return f"{frames[-1].filename}:{frames[-1].lineno}: {type(e).__name__}: {e}"


def run_main(
    main: Callable[..., None], argv: list[str] | None = None, positional: bool = False
) -> None:
    """Parse absl flags from argv, then call main() (main(args) with positional arguments).

    User mistakes, unexpected positional arguments included, exit 2 with one line.
    """
    argv = sys.argv if argv is None else argv
    # Library chatter (Orbax, TFDS) at INFO/WARNING drowns the CLIs' own few lines.
    logging.set_verbosity(logging.ERROR)
    try:
        rest = flags.FLAGS(_last_overrides_win(argv))[1:]
    except flags.Error as e:
        fail(f"{e} (see --help)")
    except Exception as e:
        if where := _config_code_error(e):
            fail(f"cannot load the config: {where}: fix the file")
        if isinstance(e, KeyError | AttributeError | TypeError | ValueError | FileNotFoundError):
            fail(f"bad config or override: {e}")
        raise
    if rest and not positional:
        fail(f"unexpected argument {rest[0]!r}: options take the form --name=value (see --help)")
    try:
        main(rest) if positional else main()
    except UserError as e:
        fail(str(e))
