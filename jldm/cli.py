"""Shared CLI plumbing: absl flag parsing and user mistakes as one line with exit code 2.

A script defines its flags on its own absl FlagValues and hands it to run_main:

    FLAGS = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run folder.", flag_values=FLAGS)

    if __name__ == "__main__":
        run_main(main, flag_values=FLAGS)

Tests call run_cli(main, argv, flag_values=FLAGS) in-process: it returns the exit code and each
call starts from the flags' defaults.

The library reports through the `jldm` logger; while run_cli runs, console_output shows those
records as the bare lines a user reads: INFO on stdout, warnings and errors on stderr.

A failure is the command's one `error:` line; the libraries' own reports of it (absl records,
tracebacks of their threads, collected coroutines) stay off the terminal (quiet_library_echoes
while a command runs, quiet_exit after a failed one).
"""

import contextlib
import inspect
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

from absl import flags
from absl import logging as absl_logging

from jldm.errors import UserError, first_line, os_error_line

_EXAMPLE = "configs/digits_demo.py"

# The exit code of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


def error_line(message: str) -> str:
    """The one line a user mistake prints: `error: ` and the message on one line."""
    return f"error: {' '.join(str(message).split())}"


def fail(message: str) -> None:
    """Print a one-line error and exit 2."""
    print(error_line(message), file=sys.stderr)
    sys.exit(2)


class _ConsoleHandler(logging.Handler):
    """Each record's bare message on one line: below WARNING to stdout, the rest to stderr.

    The streams are looked up per record, so a redirected sys.stdout (pytest's capsys,
    contextlib.redirect_stdout) gets the lines as print would.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console_output() -> Iterator[None]:
    """The `jldm` logger's INFO and above as bare lines on stdout/stderr, and only there.

    The logger's level, propagation and handlers are restored on exit. It does not propagate
    meanwhile, so a handler on the root logger (absl's, logging.basicConfig's) adds no second
    copy of a line.
    """
    logger = logging.getLogger("jldm")
    handler = _ConsoleHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# Loggers of the libraries jldm drives; the jldm logger is the commands' own.
LIBRARY_LOGGERS = ("absl", "orbax", "tensorstore", "gcsfs", "fsspec", "tensorboardX", "grain")
_JLDM = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _ours(tb) -> bool:
    """Whether a traceback passes through jldm's own code."""
    return any(f.f_code.co_filename.startswith(_JLDM) for f, _ in traceback.walk_tb(tb))


@contextlib.contextmanager
def quiet_library_echoes() -> Iterator[list[str]]:
    """Library loggers below CRITICAL dropped, and exceptions of library threads and of
    collected library coroutines kept instead of printed; yields the list they are kept in
    (one line each). The hooks and levels are put back on exit."""
    kept: list[str] = []
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    previous_thread, previous_unraisable = threading.excepthook, sys.unraisablehook

    def thread_hook(args) -> None:
        if _ours(args.exc_traceback):
            previous_thread(args)
        else:
            name = args.thread.name if args.thread is not None else "a thread"
            kept.append(f"{name}: {first_line(args.exc_value)}")

    def unraisable_hook(args) -> None:
        if args.exc_value is None or _ours(args.exc_traceback):
            previous_unraisable(args)
        else:
            kept.append(first_line(args.exc_value))

    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield kept
    finally:
        # A hook installed meanwhile for the rest of the process (jldm.runs.orbax_echoes) stays.
        if threading.excepthook is thread_hook:
            threading.excepthook = previous_thread
        if sys.unraisablehook is unraisable_hook:
            sys.unraisablehook = previous_unraisable
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quiet_exit() -> None:
    """Drop every later report of threads, collected objects and atexit callbacks (a process
    exiting on its error line: echoes of the failure it reported)."""
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda args: None
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


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


def _forget_last_parse(flag_values: flags.FlagValues) -> None:
    """Values back to their defaults, and the --config.PATH flags of a previous parse removed.

    Parsing --config defines a flag config.PATH per override, bound to that parse's ConfigDict;
    left in place, a later parse would write into the old ConfigDict or refuse to define it again.
    The config file's module goes too.
    """
    for name in list(flag_values):
        if "." in name and name.split(".", 1)[0] in flag_values:
            delattr(flag_values, name)
        # ml_collections loads a config file as module NAME_config into sys.modules, and a later
        # load executes the next file into that module: a name the next file lacks
        # (get_config) would still be the previous file's.
        sys.modules.pop(f"{name}_config", None)
    flag_values.unparse_flags()


def _help(main: Callable[..., None], flag_values: flags.FlagValues) -> str:
    module = inspect.getmodule(main)
    doc = (getattr(module, "__doc__", None) or "").strip()
    if flag_values is flags.FLAGS:
        # The flags main's module defined (an installed command's script module defines none).
        options = flag_values.module_help(module.__name__)
    else:
        options = flag_values.get_help(include_special_flags=False)
    return f"{doc}\n\n{options.strip()}".strip()


_FAILED_IN = re.compile(r'File "([^"]+)", line (\d+)')


def _config_file(argv: list[str]) -> str:
    """The --config FILE of argv ('' if none)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _failed_in_config(message: str) -> str | None:
    """file:line: exception of a config file's get_config() that failed, from the traceback
    text ml_collections puts in its error message; None for any other message."""
    head, sep, trace = message.partition("Error whilst parsing config file:")
    if not sep:
        return None
    frames = [
        (f, n) for f, n in _FAILED_IN.findall(trace) if os.sep + "site-packages" + os.sep not in f
    ]
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else head
    return f"{frames[-1][0]}:{frames[-1][1]}: {last}" if frames else last


def _unknown_key(argv: list[str], key: str) -> str:
    """The message of an override naming a key the config lacks."""
    named = [
        a.split("=", 1)[0]
        for a in argv
        if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]
    ]
    flag = named[0] if named else "a --config override"
    return f"{flag}: the config has no key {key!r}: check the spelling against the config file"


def _parse(argv: list[str], flag_values: flags.FlagValues) -> list[str] | str:
    """The arguments left after the flags, or the message of a user mistake."""
    config = _config_file(argv)
    try:
        return flag_values(argv)[1:]
    except flags.Error as e:
        if where := _failed_in_config(str(e)):
            return f"cannot load the config: {where}: fix the file"
        return f"{e} (see --help)"
    except OSError as e:
        if not os.path.exists(config):
            cause = "it does not exist"
        elif os.path.isdir(config):
            cause = "it is a folder"
        else:
            cause = e.strerror or str(e).split("failure to load: ")[-1]
        return f"cannot read the config file {config}: {cause}: pass a file such as {_EXAMPLE}"
    except Exception as e:
        if where := _config_code_error(e):
            return f"cannot load the config: {where}: fix the file"
        if isinstance(e, AttributeError) and "get_config" in str(e):
            return f"{config} defines no get_config(): define one returning a ConfigDict"
        missing = e.args[0] if isinstance(e, AttributeError) and e.args else e
        if isinstance(missing, KeyError) and missing.args:
            return _unknown_key(argv, str(missing.args[0]).strip("'\""))
        if isinstance(e, KeyError | AttributeError | TypeError | ValueError):
            return f"bad config or override: {e}"
        raise


def run_cli(
    main: Callable[..., None],
    argv: list[str],
    flag_values: flags.FlagValues | None = None,
    positional: bool = False,
) -> int:
    """Parse argv (argv[0] is the program) into flag_values, call main(); return the exit code.

    main(args) gets the positional arguments when positional is set; otherwise they are a
    mistake. A user mistake, or an OSError (a full disk, a folder where a file should be),
    prints one `error: ...` line to stderr and gives 2; Ctrl-C one line and 130; --help prints
    the script's doc and flags and gives 0; other exceptions propagate. The libraries' own
    reports of a failure stay off the terminal (quiet_library_echoes). flag_values defaults
    to absl's global flags, which only a script's single parse should use. Each call forgets
    the previous one's values and config overrides, so calls in one process are independent.
    The library's log records show meanwhile as the command's output lines (console_output).
    """
    flag_values = flags.FLAGS if flag_values is None else flag_values
    argv = _last_overrides_win(list(argv))
    if any(a in ("--help", "-h") for a in argv[1:]):
        print(_help(main, flag_values))
        return 0
    if flag_values is not flags.FLAGS and not flags.FLAGS.is_parsed():
        # Libraries read absl's global flags (absl logging, Orbax): give them their defaults,
        # as a script that parsed them with no arguments would; unparsed, absl logging adds a
        # "Logging before flag parsing" line to stderr.
        flags.FLAGS.mark_as_parsed()
    saved_argv, saved_verbosity = sys.argv, absl_logging.get_verbosity()
    # config_flags reads the --config.PATH overrides from sys.argv, not from the parsed argv.
    sys.argv = argv
    try:
        _forget_last_parse(flag_values)
        # Library chatter (Orbax, TFDS) at INFO/WARNING drowns the CLIs' own few lines. Set
        # after the unparse, which resets absl's global --verbosity flag and with it the level.
        absl_logging.set_verbosity(absl_logging.ERROR)
        rest = _parse(argv, flag_values)
        if isinstance(rest, str):
            message = rest
        elif rest and not positional:
            message = (
                f"unexpected argument {rest[0]!r}: options take the form --name=value (see --help)"
            )
        else:
            try:
                with console_output(), quiet_library_echoes() as echoes:
                    main(rest) if positional else main()
                for line in echoes:  # the command succeeded all the same
                    print(f"warning: background work of a library failed: {line}", file=sys.stderr)
                return 0
            except UserError as e:
                message = str(e)
            except OSError as e:  # a fault of the machine: a full disk, a folder for a file
                message = os_error_line(e)
            except KeyboardInterrupt:
                print(
                    error_line("interrupted by Ctrl-C: rerun the command to go on"), file=sys.stderr
                )
                return INTERRUPTED
        print(error_line(message), file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
        absl_logging.set_verbosity(saved_verbosity)


def run_main(
    main: Callable[..., None],
    argv: list[str] | None = None,
    positional: bool = False,
    flag_values: flags.FlagValues | None = None,
) -> None:
    """A script's entry: run_cli on sys.argv (or argv), then exit with its code (after a
    failure, without the libraries' late echoes of it)."""
    code = run_cli(main, sys.argv if argv is None else argv, flag_values, positional)
    if code:
        quiet_exit()
    if code == INTERRUPTED:
        # Library threads stopped mid-work (a compilation, the input pipeline) can crash the
        # interpreter's shutdown; the command's own cleanup has run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
