"""Pure decoding: one MQTT message (topic, payload) → InfluxDB line protocol, or a :class:`wire.ContractError`.

Everything here is the wire contract's (:mod:`cityos.wire`: validation, reasons, the InfluxDB mapping), so the
ingest applies exactly the contract the edge is tested against; this module only shapes the results for the
batcher and for the decode worker processes. Status messages (retained, one per gateway) become points in
measurement ``gateway_status``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cityos import wire
from cityos.wire import ContractError
from ingest.lineproto import batch_to_lines, status_to_line


@dataclass(frozen=True, slots=True)
class Decoded:
    """Line protocol of one message: ``body`` is the lines joined by newlines, UTF-8, built once."""

    body: bytes
    n_lines: int
    kind: str  # "telemetry" | "status"
    #: Telemetry: its (measurement, field, type)s for the field-type check; statuses' fields never vary in type.
    sig: frozenset[tuple[str, str, str]] | None = None


def decode_message(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
) -> Decoded | None:
    """Decode a message from any subscribed topic.

    Returns ``None`` for a message that carries nothing to store (an empty payload on a status topic: that is
    how a retained status is cleared). Raises :class:`ContractError` for anything that breaks the contract.
    """
    limits = {"now_ms": now_ms, "max_past_s": max_past_s, "max_future_s": max_future_s}
    if topic.endswith("/status"):
        if not payload:
            return None
        return Decoded(_encode(status_to_line(wire.decode_status(topic, payload, **limits))), 1, "status")
    sig: set[tuple[str, str, str]] = set()
    lines = batch_to_lines(wire.decode_batch(topic, payload, **limits), sig)
    return Decoded(_encode("\n".join(lines)), len(lines), "telemetry", frozenset(sig))


def _encode(body: str) -> bytes:
    try:
        return body.encode()
    except UnicodeEncodeError as exc:
        # The contract refuses lone surrogates ("\ud800") itself; this guard stays so that no string that cannot
        # be written as UTF-8 ever fails a whole batch later.
        raise ContractError("schema", f"string is not valid Unicode: {exc.reason}") from None


# --- chunk decoding (runs in a worker process when [ingest] decode_workers > 0) ---------------------------------
#: One result per message: ("ok", body, n_lines, kind, sig) | ("dead", reason, detail) | ("skip",)
ChunkResult = tuple


def decode_chunk(
    messages: list[tuple[str, bytes]],
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
) -> list[ChunkResult]:
    """Decode many messages; plain tuples out, so the results pickle cheaply between processes."""
    out: list[ChunkResult] = []
    for topic, payload in messages:
        try:
            d = decode_message(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)
        except ContractError as exc:
            out.append(("dead", exc.reason, exc.detail))
            continue
        except Exception as exc:  # a bug, not the message's fault; still must not block the stream
            out.append(("dead", "decode_error", f"{type(exc).__name__}: {exc}"[:500]))
            continue
        out.append(("skip",) if d is None else ("ok", d.body, d.n_lines, d.kind, d.sig))
    return out


def worker_init(service_pid: int | None = None) -> None:
    """Set up a decode worker process.

    It ignores SIGINT (Ctrl-C reaches the whole process group; the service stops its workers itself after the
    final flush) but not SIGTERM. It exits when the service process is gone (SIGKILL, OOM kill) even if its pipe
    stays open somewhere, so it never keeps the forkserver and the resource tracker alive.
    """
    import os
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if service_pid is None:
        return

    def watch() -> None:
        while _pid_alive(service_pid):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="service-watchdog", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, i.e. dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return False
    return bool(state) and state[0] not in (b"Z", b"X")
