"""A progress bar of elapsed time while one compiled sampling call runs, on a terminal only.

A sampler's steps are one jax.lax.scan inside one jitted call, which reports nothing until it
returns (a host callback per step would stall the devices); a long call (many steps, a slow
model) shows what runs and for how long instead of a silent terminal.
"""

import contextlib
import threading
from collections.abc import Iterator

from tqdm import tqdm


@contextlib.contextmanager
def running(description: str, tick: float = 0.5) -> Iterator[None]:
    """While the block runs, a bar `description: elapsed` on stderr when it is a terminal."""
    bar = tqdm(desc=description, bar_format="{desc}: {elapsed}", disable=None, leave=False)
    if bar.disable:
        yield
        return
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(tick):
            bar.refresh()

    thread = threading.Thread(target=refresh, name="jldm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
