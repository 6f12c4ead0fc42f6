"""A background thread that prepares the next inputs while the device computes.

An exception in the thread reaches the training loop at its next `next()`, which re-raises it,
so a bad batch ends the run with its message instead of leaving the loop waiting forever.
"""

import queue
import threading
from collections.abc import Iterator

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Runs iterator in a daemon thread, `depth` items ahead; next() returns them in order."""

    def __init__(self, iterator: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failed(e))
            return
        self._put(_DONE)

    def next(self):
        """The next item; re-raises the thread's exception; StopIteration at the end."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the input thread ended without a result") from None
        if isinstance(item, _Failed):
            raise item.error
        if item is _DONE:
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue)."""
        self._stop.set()
        self._thread.join(timeout=5)
