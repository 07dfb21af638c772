"""Graceful stop: the first SIGINT (Ctrl+C) or SIGTERM asks the loop to stop after the current
step (it then saves ``pause.pt``); a second one aborts at once with ``KeyboardInterrupt``.

Handlers are installed only for the duration of ``train()`` and only from the main thread
(Python delivers signals there); the previous handlers are restored afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self, enabled: bool, on_first: Callable[[str], None] | None = None):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.on_first = on_first
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            self._restore()
            raise KeyboardInterrupt(f"second {name}: training aborted without saving")
        self.requested = True
        if self.on_first is not None:
            self.on_first(name)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
