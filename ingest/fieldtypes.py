"""The type of every field the ingest has written, so a point InfluxDB would refuse is never sent.

InfluxDB fixes a field's type (float, boolean, string) by the first point written to it, and refuses a later point
whose field has another type ("field type conflict", HTTP 400). Refused is not harmless: InfluxDB 1.x has already
put the refused point's series in its index, so ``SHOW SERIES`` (and every dashboard variable built on it) lists
a device that never sent a valid point. The ingest therefore checks each message against this table before it is
batched, and dead-letters it with reason ``field_type_conflict`` instead of writing it.

Where the types come from (only what InfluxDB has confirmed, so the table is never wrong):

* every write InfluxDB has stored (HTTP 204): the types of its messages' fields;
* InfluxDB's own answer when a write is refused for a conflict (``... is type string, already exists as type
  float``): the type it states wins, e.g. for a field written before this table existed, or by another ingest
  process that saw it first (each process has its own table);
* at start, ``SHOW FIELD KEYS`` where the ingest's InfluxDB user may read (a write-only user may not: then the
  table is what this data_dir has learnt).

What that leaves open: a field no write has confirmed yet, arriving with two types within one flush interval (or
at two ingest processes) from different messages. Both go to InfluxDB, which refuses one (dead-lettered as
``influx_rejected``; its series stays indexed). Two types in one message are caught here (the message is refused).

The table lives in ``field_types.json`` in the data_dir (rewritten atomically when a field is new: rare), so a
restart keeps it. The collector reads it; the writer threads add to it, under its lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from ingest.lineproto import Signature

log = logging.getLogger(__name__)

FILE = "field_types.json"
_CONFLICT_RE = re.compile(
    r'field type conflict: input field \\?"(?P<field>[^"\\]+)\\?" on measurement \\?"(?P<m>[^"\\]+)\\?" '
    r"is type \w+, already exists as type (?P<type>\w+)"
)


class FieldTypes:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._types: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            try:
                for m, f, t in json.loads(path.read_text()):
                    self._types[(m, f)] = t
            except (OSError, ValueError, TypeError):
                log.warning("cannot read %s; field types are learnt again from the data", path)

    def __len__(self) -> int:
        return len(self._types)

    def conflict(self, sig: Signature) -> str | None:
        """Why a message with these fields would be refused, or None. Also finds a field with two types in the
        message itself."""
        types = self._types
        seen: dict[tuple[str, str], str] = {}
        for m, f, t in sig:
            known = types.get((m, f)) or seen.setdefault((m, f), t)
            if known != t:
                return f"field {f!r} of measurement {m!r} is {t} here but {known} in InfluxDB"
        return None

    def confirm(self, sig: Signature) -> None:
        """Record the types of a message InfluxDB has stored."""
        new = [(m, f, t) for m, f, t in sig if (m, f) not in self._types]
        if new:
            with self._lock:
                for m, f, t in new:
                    self._types.setdefault((m, f), t)
                self._save()

    def learn_from_error(self, message: str) -> bool:
        """InfluxDB said which type a field has; True if it told us something."""
        found = [(g["m"], g["field"], g["type"]) for g in (mt.groupdict() for mt in _CONFLICT_RE.finditer(message))]
        if not found:
            return False
        self.load(found)
        return True

    def load(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Types as InfluxDB states them (they win over what was learnt)."""
        with self._lock:
            for m, f, t in rows:
                self._types[(m, f)] = t
            self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(sorted([m, f, t] for (m, f), t in self._types.items())))
            os.replace(tmp, self._path)
        except OSError:  # a full disk: the table stays in memory; the next new field tries again
            log.warning("cannot write %s", self._path, exc_info=True)
            with contextlib.suppress(OSError):
                tmp.unlink()


def show_field_keys_rows(series: list[dict]) -> list[tuple[str, str, str]]:
    """``SHOW FIELD KEYS`` results (series per measurement, values ``[fieldKey, fieldType]``) as table rows."""
    return [(s["name"], k, t) for s in series for k, t in s.get("values") or []]
