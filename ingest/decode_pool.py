"""Decode worker processes, each on a pipe of its own.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: its workers share one result queue. A worker killed while
it writes a result (an OOM kill, an operator's ``kill -9``) leaves half a message in that queue; the executor's
manager thread then blocks forever in ``recv()`` on it (CPython 3.11, reproduced under load), so no future ever
completes, the service stalls, and even interpreter exit hangs joining that thread. Here each worker has its own
duplex pipe, and the service holds the only other end: a dead worker is an EOF on its pipe, never a stuck read.
Its in-flight chunks fail with :class:`BrokenProcessPool` (the caller decodes them itself) and it is replaced.

Results come back in submission order per worker, and the caller waits on them in its own order, so nothing here
reorders messages.

Locks: a slot has two, and no lock is ever held by the reader while it blocks, nor by anyone across a pipe write
that the reader must drain. ``send_lock`` orders the writers of tasks (it is held across the blocking write of a
task); ``lock`` guards the in-flight queue and the connection and is only held for a few bytecodes. The reader
takes only ``lock``. (Before, one lock did both: a sender blocked writing a task while holding it, the worker
blocked writing a large result, and the reader that would drain that result waited for the lock, for good.)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

#: Workers that keep dying within this long of starting are replaced after a back-off (doubling each time).
_QUICK_DEATH_S = 5.0
_MAX_BACKOFF_S = 30.0


class RemoteError(Exception):
    """The task raised in the worker; ``str()`` is the worker's traceback."""


def _worker_main(
    conn: Connection,
    fn: Callable[..., Any],
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the service closed its end, or is gone
            return
        if args is None:
            return
        try:
            out: tuple[bool, Any] = (True, fn(*args))
        except Exception:
            out = (False, traceback.format_exc())
        conn.send(out)


class _Slot:
    """One worker: its process, the service's end of its pipe, and the futures of the chunks it holds."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = threading.Lock()  # inflight + conn; never held across I/O; a death empties the queue under it
        self.send_lock = threading.Lock()  # one task written at a time, in inflight order; held across the write
        self.inflight: collections.deque[Future[Any]] = collections.deque()
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.started_at = 0.0
        self.backoff_s = 0.0
        self.quick_deaths = 0


class DecodePool:
    """``n`` worker processes running ``fn``; :meth:`submit` returns a future of ``fn(*args)``.

    A worker that dies fails its in-flight futures with :class:`BrokenProcessPool` and is restarted (after a
    back-off if it died right after starting, e.g. a broken install); ``on_restart`` is called for each restart.
    Submitting while no worker is up also gives a failed future, never an exception or a wait.
    """

    def __init__(
        self,
        n: int,
        fn: Callable[..., Any],
        *,
        mp_context: Any = None,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
        on_restart: Callable[[], None] | None = None,
        name: str = "decode",
    ) -> None:
        if n < 1:
            raise ValueError("a pool needs at least one worker")
        self._fn = fn
        self._ctx = mp_context or multiprocessing.get_context("forkserver")
        self._initializer = initializer
        self._initargs = initargs
        self._on_restart = on_restart
        self._name = name
        self._closing = threading.Event()
        self._slots = [_Slot(k) for k in range(n)]
        self._next = 0
        self._readers: list[threading.Thread] = []
        for slot in self._slots:
            self._start(slot)
            t = threading.Thread(target=self._reader_main, args=(slot,), name=f"{name}-reader-{slot.index}")
            t.daemon = True
            t.start()
            self._readers.append(t)

    # --- public --------------------------------------------------------------------------------------------------
    def submit(self, *args: Any) -> Future[Any]:
        """Send ``args`` to the least busy live worker (ties: round robin)."""
        live = [s for s in self._slots if s.conn is not None]
        if self._closing.is_set() or not live:
            fut: Future[Any] = Future()
            fut.set_exception(BrokenProcessPool("no decode worker is running"))
            return fut
        self._next += 1
        n = len(self._slots)
        return self._send(min(live, key=lambda s: (len(s.inflight), (s.index - self._next) % n)), args)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid is not None]

    def all_alive(self) -> bool:
        return all(s.process is not None and s.process.is_alive() for s in self._slots)

    def warm_up(self, *args: Any, timeout: float = 60.0) -> None:
        """Run ``fn(*args)`` once on every worker and wait for it: their imports and initializers are done."""
        deadline = time.monotonic() + timeout
        for fut in [self._send(slot, args) for slot in self._slots]:
            fut.result(timeout=max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the workers to exit (after the tasks they hold), then kill what is still running at ``timeout``."""
        self._closing.set()
        for slot in self._slots:
            with slot.send_lock:
                conn = slot.conn
                if conn is not None:
                    with contextlib.suppress(OSError, ValueError):
                        conn.send(None)
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            p = slot.process
            if p is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("decode worker %s did not exit; killing it", p.pid)
                p.kill()
                p.join(5)
        for t in self._readers:
            t.join(5)
        for slot in self._slots:
            with slot.lock:
                conn, slot.conn = slot.conn, None
            if conn is not None:
                conn.close()

    # --- internals -----------------------------------------------------------------------------------------------
    def _send(self, slot: _Slot, args: tuple[Any, ...]) -> Future[Any]:
        fut: Future[Any] = Future()
        with slot.send_lock:  # the order of writes is the order of inflight
            with slot.lock:
                conn = slot.conn
                if conn is None:
                    fut.set_exception(BrokenProcessPool("the decode worker died"))
                    return fut
                slot.inflight.append(fut)
            try:
                conn.send(args)  # may block until the worker reads; the reader never waits for send_lock
            except (OSError, ValueError) as exc:  # the worker is gone (EPIPE) or its pipe was just closed
                with slot.lock:
                    mine = fut in slot.inflight
                    if mine:
                        slot.inflight.remove(fut)
                if mine:  # else the death handling failed it already
                    fut.set_exception(BrokenProcessPool(f"the decode worker died: {exc}"))
        return fut

    def _start(self, slot: _Slot) -> None:
        ours, theirs = self._ctx.Pipe(duplex=True)
        p = self._ctx.Process(
            target=_worker_main,
            args=(theirs, self._fn, self._initializer, self._initargs),
            name=f"{self._name}-worker-{slot.index}",
            daemon=True,
        )
        p.start()
        theirs.close()  # the worker's end now lives only in the worker: its death is an EOF here
        with slot.lock:
            slot.process, slot.conn, slot.started_at = p, ours, time.monotonic()

    def _reader_main(self, slot: _Slot) -> None:
        while True:
            conn = slot.conn
            if conn is not None:
                try:
                    ok, value = conn.recv()
                except (EOFError, OSError):
                    pass  # the worker is gone (or we closed the pipe at shutdown)
                else:
                    with slot.lock:
                        fut = slot.inflight.popleft()
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(RemoteError(value))
                    continue
            if not self._died(slot):
                return

    def _died(self, slot: _Slot) -> bool:
        """Fail the dead worker's futures and start another; False when the pool is closing."""
        with slot.lock:
            lost = list(slot.inflight)
            slot.inflight.clear()
            conn, slot.conn = slot.conn, None
        if conn is not None:
            with slot.send_lock:  # a sender blocked on the dead worker's pipe gets EPIPE and lets go first
                conn.close()
        p = slot.process
        if p is not None:
            p.join(5)
        for fut in lost:
            fut.set_exception(BrokenProcessPool("a decode worker died while it held this chunk"))
        if self._closing.is_set():
            return False
        # Back off only when it keeps dying young (a broken install, say): one kill is replaced at once.
        slot.quick_deaths = slot.quick_deaths + 1 if time.monotonic() - slot.started_at < _QUICK_DEATH_S else 0
        slot.backoff_s = min(_MAX_BACKOFF_S, 0.25 * 2**slot.quick_deaths) if slot.quick_deaths > 1 else 0.0
        log.error(
            "decode worker %s died (exit code %s) holding %d chunks; starting another%s",
            p.pid if p else "?",
            p.exitcode if p else "?",
            len(lost),
            f" in {slot.backoff_s:.1f} s" if slot.backoff_s else "",
        )
        if self._on_restart is not None:
            self._on_restart()
        while not self._closing.wait(slot.backoff_s):
            try:
                self._start(slot)
                return True
            except Exception:  # e.g. out of memory: keep trying; meanwhile the service decodes in-process
                log.exception("cannot start a decode worker; retrying")
                slot.backoff_s = min(_MAX_BACKOFF_S, max(1.0, 2 * slot.backoff_s))
        return False
