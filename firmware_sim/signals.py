"""Stopping a standalone simulator: SIGTERM and SIGINT set an event, the previous handlers come back after."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def stop_on_signals(extra: Mapping[int, Callable[[], None]] | None = None) -> Iterator[threading.Event]:
    """An event that SIGTERM or SIGINT sets while inside; ``extra`` maps other signals to actions (the forest
    station's SIGUSR1 freeze). Handlers can only be installed on the main thread: elsewhere (a simulator started
    by a test) the event is only set by its caller."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        for sig, action in (extra or {}).items():
            previous[sig] = signal.signal(sig, lambda *_, a=action: a())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
