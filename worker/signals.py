"""Stop signals for the long-running commands (``run``, ``backfill``, ``curate``) and the demo.

Handlers only set flags. The first SIGTERM or SIGINT logs ``signal=NAME received, draining and
stopping``, sets ``interrupted`` and every linked event, and, given ``shutdown_timeout_s``, arms a
watchdog that ends the process with EXIT_FAILURE if the drain overruns (uncommitted work is
redelivered on restart). Once stopping, a second SIGINT ends the process at once with
EXIT_INTERRUPTED (``on_repeat="exit"``; a repeated SIGTERM only re-arms the watchdog), or any
second signal raises KeyboardInterrupt (``on_repeat="raise"``: the demo's ``finally`` blocks stop
its broker). Handlers are set from the main thread only (elsewhere ``install`` does nothing);
``restore`` puts back the ones they replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal

from worker.exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED

logger = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any] | int | None  # what signal.getsignal returns
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """``interrupted`` is the event the first signal sets: the caller's (a worker's ``stop``)
    when given, else a new one. ``hint`` is appended to the log line of that signal."""

    def __init__(self, interrupted: threading.Event | None = None, *,
                 shutdown_timeout_s: float | None = None,
                 on_repeat: Literal["exit", "raise"] = "exit", hint: str = "") -> None:
        self.interrupted = interrupted if interrupted is not None else threading.Event()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.on_repeat = on_repeat
        self.hint = hint
        self._linked: list[threading.Event] = []
        self._previous: dict[int, Handler] = {}

    def link(self, event: threading.Event) -> None:
        """Set ``event`` too on the first signal (at once if it came already)."""
        self._linked.append(event)
        if self.interrupted.is_set():
            event.set()

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.interrupted.is_set():
            if self.on_repeat == "raise":
                raise KeyboardInterrupt
            if signum == signal.SIGINT:
                os._exit(EXIT_INTERRUPTED)
        logger.info("signal=%s received, draining and stopping%s", signal.Signals(signum).name,
                    self.hint)
        self.interrupted.set()
        for event in self._linked:
            event.set()
        if self.shutdown_timeout_s is not None:
            timer = threading.Timer(self.shutdown_timeout_s, _shutdown_overrun,
                                    [self.shutdown_timeout_s])
            timer.daemon = True
            timer.start()


def _shutdown_overrun(timeout_s: float) -> None:
    logger.error("shutdown took longer than shutdown_timeout_s=%.0f; exiting now", timeout_s)
    os._exit(EXIT_FAILURE)
