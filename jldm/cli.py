"""Shared CLI plumbing: absl flag parsing and user mistakes as one line with exit code 2."""

import sys
from collections.abc import Callable

from absl import flags, logging

from jldm.errors import UserError


def fail(message: str) -> None:
    """Print a one-line error and exit 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


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
        rest = flags.FLAGS(argv)[1:]
    except flags.Error as e:
        fail(f"{e} (see --help)")
    except (KeyError, AttributeError, TypeError, ValueError, FileNotFoundError) as e:
        fail(f"bad config or override: {e}")
    if rest and not positional:
        fail(f"unexpected argument {rest[0]!r}: options take the form --name=value (see --help)")
    try:
        main(rest) if positional else main()
    except UserError as e:
        fail(str(e))
