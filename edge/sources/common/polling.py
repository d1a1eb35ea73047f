"""The loop of a source that waits on serial ports (the truck's indicator and GPS, the bus's GPS): one owner."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Sequence
from typing import Any

from edge.sources.common.serialport import SerialPort

__all__ = ["PollingSource", "select_ready"]


def select_ready(ports: Sequence[SerialPort], timeout: float = 0.1, idle_s: float = 0.1) -> list[SerialPort] | None:
    """The open ports that have bytes within ``timeout``; None (after ``idle_s``) when none is open (all
    unplugged: :meth:`SerialPort.ensure_open` retries on the next turn)."""
    fds = {p.fd: p for p in ports if p.fd is not None}
    if not fds:
        time.sleep(idle_s)
        return None
    try:
        ready = select.select(list(fds), [], [], timeout)[0]
    except (OSError, ValueError):  # an fd closed under us
        ready = []
    return [fds[fd] for fd in ready]


class PollingSource:
    """``run()`` for a source that reads its ports turn by turn: :meth:`_loop_once` until ``stop``, its health
    refreshed every :attr:`health_every_s` (the agent's status reads it), and on the way out :meth:`_on_stop`
    (close the ports) and a last refresh."""

    health_every_s = 0.5

    def _on_start(self, ctx: Any) -> None:
        """Before the first turn (restore committed state, start helper threads)."""

    def _loop_once(self, ctx: Any) -> None:
        raise NotImplementedError

    def _refresh_health(self) -> None:
        raise NotImplementedError

    def _on_stop(self) -> None:
        """After the last turn, also after a crash: close the ports, stop helper threads."""

    def run(self, ctx: Any, stop: threading.Event) -> None:
        self._on_start(ctx)
        last_health = 0.0
        try:
            while not stop.is_set():
                self._loop_once(ctx)
                mono = time.monotonic()
                if mono - last_health >= self.health_every_s:
                    self._refresh_health()
                    last_health = mono
        finally:
            self._on_stop()
            self._refresh_health()
