"""Stop signals for long runs: SIGINT and SIGTERM unwind the run like Ctrl-C, so every atomic write in
progress removes its temporary file, and the caller learns which signal came (exit code 128 + signal)."""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While active, SIGINT and SIGTERM raise :class:`KeyboardInterrupt` in the main thread and are
    remembered in ``received`` (the first one), even when a library swallows the interrupt."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        raise KeyboardInterrupt
