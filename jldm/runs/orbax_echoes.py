"""Orbax's echoes of a failed restore: when one array of a checkpoint fails to read, the
reads still in flight report 'Event loop is closed', unretrieved tasks and unawaited coroutines
around the one-line error. The filters here drop exactly those."""

import contextlib
import gc
import logging
import sys
import warnings


def _loop_closed(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _abandoned_read(exc: BaseException | None) -> bool:
    """A TensorStore read error (its message carries the spec) that nobody is waiting for."""
    return exc is not None and "tensorstore_spec" in str(exc)


class _DropAbandonedReads(logging.Filter):
    """Drops asyncio's never-retrieved task/future reports of orbax's abandoned array reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        ours = any(w in text for w in ("orbax", "tensorstore", "Event loop is closed"))
        ours = ours or _loop_closed(exc) or _abandoned_read(exc)
        return not ("exception was never retrieved" in text and ours)


def _install_filters() -> tuple:
    """Put the filters in place; -> what undoes them."""
    previous, previous_except = sys.unraisablehook, sys.excepthook

    def hook(args) -> None:
        if not (_loop_closed(args.exc_value) or _abandoned_read(args.exc_value)):
            previous(args)

    def except_hook(kind, value, tb) -> None:
        if not _loop_closed(value):
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = hook, except_hook
    log_filter = _DropAbandonedReads()
    logging.getLogger("asyncio").addFilter(log_filter)
    # The warning names the frame that happened to run the collection, not orbax, so the
    # filter matches the message; a failed restore is what leaves coroutines unawaited here.
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
    return previous, previous_except, log_filter


_PROCESS_WIDE = False


def quiet_abandoned_reads_for_process() -> None:
    """For a CLI that owns its process: keep the filters of quiet_abandoned_reads installed.

    The echoes of a failed restore can come after it returned (garbage collection reports
    unawaited coroutines at an arbitrary later moment); a process that ends on the one-line
    error wants none of them. Library calls (a notebook) scope the filters to the restore.
    """
    global _PROCESS_WIDE
    if not _PROCESS_WIDE:
        _install_filters()
        _PROCESS_WIDE = True


@contextlib.contextmanager
def quiet_abandoned_reads():
    """Silence the echoes of a failed restore while it runs, then put every hook back.

    When one array fails to read, orbax closes its event loop while TensorStore reads of the
    other arrays are still in flight; each of them then raises 'Event loop is closed' in a
    TensorStore thread (printed through sys.unraisablehook or sys.excepthook) or leaves an
    unretrieved task or future, and the coroutines it never started are reported as 'never
    awaited' when collected. That is hundreds of tracebacks around the one-line report, and
    they can fire before the failed restore returns, so the filters go in first; only those
    exact errors (and TensorStore read errors nobody awaits) are dropped; excepthook drops only
    the closed loop. Collected before the hooks are restored, so the echoes of this restore
    are reported while they are still filtered.
    """
    if _PROCESS_WIDE:
        yield
        return
    with warnings.catch_warnings():
        previous, previous_except, log_filter = _install_filters()
        try:
            yield
        finally:
            gc.collect()
            sys.unraisablehook, sys.excepthook = previous, previous_except
            logging.getLogger("asyncio").removeFilter(log_filter)
