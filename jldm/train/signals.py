"""Clean stops: SIGTERM/SIGINT are recorded, so a training loop can checkpoint before it ends."""

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Yield a list that collects SIGTERM/SIGINT numbers instead of dying on them.

    Outside the main thread (where Python cannot install handlers) the list stays empty.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    old = {s: signal.signal(s, lambda n, _: received.append(n)) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
