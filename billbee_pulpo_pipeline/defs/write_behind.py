"""Write-behind: the PULPO writes of a sync overlap its paced Billbee read.

Billbee allows 2 requests per second and endpoint, so a long read spends most of its wall time
waiting for the pacer's next slot. When one run reads and writes, the writer does its passes in a
worker thread meanwhile: the reader stores each page's changes in DuckDB and, whenever the worker is
idle, wakes it for a pass over what is pending in the state store. A pass is the writer's ordinary
idempotent pass (what PULPO acknowledged is compared with the snapshot), so overlapping changes only
*when* something is written, never *what*. The complete pass (removals, kits, quarantine) runs after
the read, once the snapshot is whole and its blocking check has passed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class WriteBehind:
    """Runs `write_pass` in a worker thread each time `wake()` is called while the worker is idle.

    Use as a context manager around the read. On exit the worker finishes its current pass (no new
    one starts) and an error it raised is raised in the reader's thread. Without a pass (`None`)
    every method is a no-op, so a read-only run uses the same code path.
    """

    def __init__(self, write_pass: Callable[[], None] | None, name: str = "write-behind") -> None:
        self._pass = write_pass
        self._wake = threading.Event()
        self._busy = False
        self._stop = False
        self.error: BaseException | None = None
        self.passes = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True) if write_pass else None

    @property
    def idle(self) -> bool:
        """True when a wake-up would start a pass now (nothing running or queued)."""
        return self._thread is not None and not self._busy and not self._wake.is_set()

    def wake(self) -> None:
        """New changes are stored: start a pass when the current one is done. Raises the worker's error."""
        self.raise_error()
        if self._thread is not None:
            self._wake.set()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        assert self._pass is not None
        while True:
            self._wake.wait()
            if self._stop:
                return
            self._busy = True
            self._wake.clear()
            try:
                self._pass()
                self.passes += 1
            except BaseException as exc:  # handed to the reader's thread, which fails the run
                self.error = exc
                return
            finally:
                self._busy = False

    def __enter__(self) -> WriteBehind:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        if exc is None:
            self.raise_error()
