"""Pure batching logic: no I/O, no threads of its own, a clock you can pass in.

* :class:`Batcher` accumulates decoded messages and says when to flush (``batch_lines`` lines, ``batch_bytes``
  bytes, half the MQTT Receive Maximum in messages, or ``flush_interval_s`` after the first line of the batch
  arrived).
* :class:`Batch` is one flush: the messages it covers (so their MQTT packet ids can be acked after a 204) and the
  line protocol body, built once by joining the per-message blocks.
* :class:`AckSequencer` releases acknowledgements in the order the messages were received (MQTT 5 §4.6 asks
  for PUBACKs in receive order), per connection generation: a packet id from an older connection is never
  released on a newer one (the broker redelivers those messages itself).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Item:
    """One decoded MQTT message waiting to be written."""

    mid: int
    qos: int
    gen: int  # connection generation the message arrived on
    topic: str
    payload: bytes  # kept for the dead-letter store in case InfluxDB rejects it
    body: bytes  # line protocol, UTF-8, lines joined by "\n"
    n_lines: int
    received_at_ms: int
    done: bool = False  # written (204) or dead-lettered
    #: Its fields' (measurement, field, type)s: confirmed in the field-type table once InfluxDB stored them.
    sig: frozenset[tuple[str, str, str]] | None = None

    @property
    def ack_key(self) -> tuple[int, int] | None:
        return (self.gen, self.mid) if self.qos > 0 else None


@dataclass(slots=True)
class Batch:
    items: list[Item]
    n_lines: int
    n_bytes: int
    _body: bytes | None = field(default=None, repr=False)

    def body(self) -> bytes:
        """The line protocol for every item, built once (one join over the per-message blocks)."""
        if self._body is None:
            self._body = b"\n".join(i.body for i in self.items)
        return self._body

    def ack_keys(self) -> list[tuple[int, int]]:
        """(generation, mid) of every QoS>0 message this flush covers, in receive order."""
        return [k for k in (i.ack_key for i in self.items) if k is not None]

    def split(self) -> tuple[Batch, Batch]:
        """Halve by message (for finding the message InfluxDB rejects)."""
        mid = len(self.items) // 2
        return Batch.of(self.items[:mid]), Batch.of(self.items[mid:])

    @staticmethod
    def of(items: Sequence[Item]) -> Batch:
        items = list(items)
        return Batch(items, sum(i.n_lines for i in items), sum(len(i.body) + 1 for i in items))


class Batcher:
    """Accumulate :class:`Item` s; ``due()`` says when the batch should be flushed, ``take()`` empties it."""

    def __init__(
        self,
        max_lines: int = 5000,
        max_age_s: float = 1.0,
        max_bytes: int = 8_000_000,
        max_messages: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            max_lines < 1
            or max_age_s <= 0
            or max_bytes < 1
            or (max_messages is not None and max_messages < 1)
        ):
            raise ValueError("max_lines, max_age_s, max_bytes and max_messages must be positive")
        self.max_lines = max_lines
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        #: Flush at this many messages even if the lines are few: the broker sends at most Receive Maximum unacked
        #: messages, so waiting for ``max_lines`` of small messages would idle until the age limit.
        self.max_messages = max_messages
        self._clock = clock
        self._items: list[Item] = []
        self._lines = 0
        self._bytes = 0
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def n_lines(self) -> int:
        return self._lines

    def add(self, item: Item) -> None:
        if self._first_at is None:
            self._first_at = self._clock()
        self._items.append(item)
        self._lines += item.n_lines
        self._bytes += len(item.body) + 1

    def full(self) -> bool:
        return (
            self._lines >= self.max_lines
            or self._bytes >= self.max_bytes
            or (self.max_messages is not None and len(self._items) >= self.max_messages)
        )

    def due(self, now: float | None = None) -> bool:
        """Flush now? (full, or the first line has waited ``max_age_s``)."""
        if not self._items:
            return False
        if self.full():
            return True
        now = self._clock() if now is None else now
        assert self._first_at is not None
        return now - self._first_at >= self.max_age_s

    def time_until_due(self, now: float | None = None) -> float | None:
        """Seconds until :meth:`due` becomes true by age; ``None`` when empty, 0 when already due."""
        if not self._items:
            return None
        if self.full():
            return 0.0
        now = self._clock() if now is None else now
        assert self._first_at is not None
        return max(0.0, self._first_at + self.max_age_s - now)

    def take(self) -> Batch:
        batch = Batch(self._items, self._lines, self._bytes)
        self._items, self._lines, self._bytes, self._first_at = [], 0, 0, None
        return batch


class AckSequencer:
    """Release acks in receive order, one connection generation at a time. Thread-safe.

    ``received(gen, mid)`` registers a message in the order it arrived; ``done(keys)`` marks messages as safe to
    ack (written, or dead-lettered) and returns the (gen, mid) that may be acked now: the longest done prefix of
    the receive order. A newer generation discards everything registered under an older one: those packet ids
    belong to a dead connection, the broker redelivers the messages on the new one.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._gen: int | None = None
        self._order: deque[tuple[int, float]] = deque()  # (mid, when registered), receive order
        self._done: set[int] = set()

    def received(self, gen: int, mid: int) -> bool:
        """Register; False if ``gen`` is older than the current generation (the message is stale)."""
        with self._lock:
            if self._gen != gen:
                if self._gen is not None and gen < self._gen:
                    return False
                self._gen = gen
                self._order.clear()
                self._done.clear()
            self._order.append((mid, self._clock()))
            return True

    def done(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        with self._lock:
            gen = self._gen
            for g, mid in keys:
                if g == gen:
                    self._done.add(mid)
            out: list[tuple[int, int]] = []
            order, done = self._order, self._done
            while order and order[0][0] in done:
                mid = order.popleft()[0]
                done.discard(mid)
                out.append((gen, mid))  # type: ignore[arg-type]
            return out

    def waiting(self) -> int:
        """Messages registered and not yet released."""
        with self._lock:
            return len(self._order)

    def oldest_age_s(self) -> float:
        """How long the oldest unreleased message has waited (0 if none): a hole in the ack order shows here."""
        with self._lock:
            return max(0.0, self._clock() - self._order[0][1]) if self._order else 0.0
