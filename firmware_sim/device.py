"""What every simulated device shares: its lifecycle, and the tail of its standalone ``main()``.

A device (a forest station bus, a Wi-SUN module, a truck's indicator and GPS, a bus's GPS and radio) serves its
links from background threads between ``start()`` and ``stop()``, appends what really happened to a ground-truth
file, and can be woken from another thread (a fault applied, a stop). :class:`SimDevice` is that lifecycle once;
a device implements ``start()`` (open its links, then :meth:`SimDevice._spawn` its threads) and :meth:`_close`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Self

from firmware_sim.signals import stop_on_signals

__all__ = ["SimDevice", "serve_until_stopped"]


class SimDevice:
    """Threads, a stop event, a wake pipe and a ground-truth file, started and stopped once each."""

    #: A pipe the serving thread selects on beside its link, so that ``wake()`` interrupts a blocking read.
    WAKE_PIPE = True

    def __init__(self, truth_path: Path | str | None = None) -> None:
        self.truth_path = Path(truth_path) if truth_path else None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._truth: IO[str] | None = None
        self._wake_r = self._wake_w = -1
        if self.WAKE_PIPE:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def _open_truth(self) -> None:
        if self.truth_path is not None and self._truth is None:
            self.truth_path.parent.mkdir(parents=True, exist_ok=True)
            self._truth = self.truth_path.open("a", encoding="utf-8")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        self._stopping.clear()
        th = threading.Thread(target=target, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def wake(self) -> None:
        """Interrupt the serving thread's wait (a fault to apply, a stop)."""
        with contextlib.suppress(OSError):  # full (it is awake anyway) or closed (stopped)
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 512)

    def stop(self) -> None:
        """Stop serving, close the links (:meth:`_close`), the wake pipe and the ground truth."""
        self._stopping.set()
        self.wake()
        for th in self._threads:
            th.join(timeout=5)
        self._threads = []
        self._close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._truth is not None:
            self._truth.close()
            self._truth = None

    def _close(self) -> None:
        """Close the device's links (its ptys, its socket)."""

    def start(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_stopped(
    name: str,
    devices: Iterable[SimDevice],
    *,
    duration: float | None,
    started: Callable[[], None] = lambda: None,
    counters: Callable[[], Any],
    signals: dict[int, Callable[[], None]] | None = None,
    tick: Callable[[], float] | None = None,
) -> int:
    """A simulator's standalone run: start ``devices``, say where they are (``started``), serve until SIGTERM,
    SIGINT or ``duration`` real seconds, stop them all and print their counters. ``signals`` adds handlers (e.g.
    SIGUSR1: freeze); ``tick`` runs periodic work and returns the seconds until it wants to run again."""
    devices = list(devices)
    with stop_on_signals(signals or {}) as stop:
        try:
            for d in devices:
                d.start()
            started()
            if tick is None:
                stop.wait(duration)
            else:
                end = None if duration is None else time.monotonic() + duration
                while not stop.is_set():
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    wait = tick()
                    stop.wait(wait if left is None else min(wait, left))
        finally:
            for d in devices:
                d.stop()
            print(f"{name}: stopped; {json.dumps(counters())}", flush=True)
    return 0

