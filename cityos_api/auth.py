"""Scoped bearer tokens: who may read what (docs/api.md, "Scopes and tokens").

Scopes, each a set of routes (every route declares one, in code and in the OpenAPI document):

* ``open``: the open data and the public feeds; no token needed, rate-limited per client;
* ``service``: aggregates of every family for the city's services (still k-anonymous for households);
* ``internal:fleet``: gateways' and devices' health, the API's metrics;
* ``internal:energy-households``: one household's energy (the energy division alone).

A token carries one or more scopes and may call ``open`` routes besides; scopes do not imply each other (a
``service`` token cannot read a household, an ``internal:energy-households`` token no service aggregate).

**The store** (``[auth] tokens_file``, JSON, 0600, written by ``cityos api token`` through the one private-file
writer) keeps for each token its id, name, scopes, creation, expiry and revocation times and the SHA-256 of its
secret, never the secret. A token is ``cityos_<id>_<secret>``: the id (8 hex) finds the record and is what logs
name; the secret is 256 random bits, shown once at creation. Why SHA-256 and not a slow password hash: slow
hashes protect low-entropy passwords; 256 random bits cannot be guessed from their hash, and every request checks
one (microseconds, not 100 ms). The API re-reads the store when its modification time or size changes, so a
revocation takes effect at the next request, without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cityos.credentials import write_private

__all__ = [
    "FLEET",
    "HOUSEHOLDS",
    "OPEN",
    "SCOPES",
    "SERVICE",
    "Denied",
    "TokenRecord",
    "TokenStore",
    "parse_expiry",
]

OPEN = "open"
SERVICE = "service"
FLEET = "internal:fleet"
HOUSEHOLDS = "internal:energy-households"
#: Every scope and what it opens (the OpenAPI document's security scheme lists these).
SCOPES: dict[str, str] = {
    OPEN: "open data and public feeds; no token needed, rate-limited per client",
    SERVICE: "aggregates of every family for the city's services (households only k-anonymous)",
    FLEET: "gateways' and devices' health, the API's metrics",
    HOUSEHOLDS: "one household's energy (the energy division alone)",
}
_TOKEN_RE = re.compile(r"cityos_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
_ID_RE = re.compile(r"[0-9a-f]{8}")
_DURATION_RE = re.compile(r"(\d{1,5})([hdw])")
_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
#: Longest life of a token: a forgotten token must die on its own.
MAX_LIFETIME_S = 400 * 86400


class Denied(Exception):
    """Not allowed: ``status`` 401 (no valid token) or 403 (a valid token without the scope); ``why`` is safe to
    show and log (it never holds the token)."""

    def __init__(self, status: int, why: str, token_id: str | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.token_id = token_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(s: str | None) -> dt.datetime | None:
    return None if s is None else dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--expires``: a duration (``12h``, ``90d``, ``4w``) or a date/time (``2027-03-31``, ISO 8601; a date ends
    at its end in Japan). At most :data:`MAX_LIFETIME_S` ahead, and in the future."""
    now = now or _now()
    m = _DURATION_RE.fullmatch(text.strip())
    if m:
        at = now + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
                day = dt.date.fromisoformat(text.strip())
                at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(),
                                         dt.timezone(dt.timedelta(hours=9)))
            else:
                at = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--expires: expected a duration (12h, 90d, 4w) or a date (YYYY-MM-DD), got {text!r}")\
                from None
        if at.tzinfo is None:
            raise ValueError(f"--expires: {text!r} has no UTC offset (add Z or +09:00)")
    if at <= now:
        raise ValueError(f"--expires: {text!r} is not in the future")
    if (at - now).total_seconds() > MAX_LIFETIME_S:
        raise ValueError(f"--expires: at most {MAX_LIFETIME_S // 86400} days ahead (tokens must die on their own)")
    return at.astimezone(dt.UTC).replace(microsecond=0)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    scopes: tuple[str, ...]
    created: str
    expires: str
    sha256: str = field(repr=False)
    revoked: str | None = None

    def state(self, now: dt.datetime | None = None) -> str:
        if self.revoked:
            return "revoked"
        exp = _parse_iso(self.expires)
        return "expired" if exp is not None and exp <= (now or _now()) else "active"

    def public(self) -> dict[str, Any]:
        """What ``token list`` shows: everything but the hash."""
        d = asdict(self)
        d.pop("sha256")
        d["scopes"] = list(self.scopes)
        d["state"] = self.state()
        return d


class TokenStore:
    """The token file: created by the CLI, read by the API (re-read when it changes)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, TokenRecord] = {}

    # ---- reading (the API)
    def _load(self) -> dict[str, TokenRecord]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._records = self._parse(self.path.read_bytes())
                self._stamp = stamp
            return self._records

    def _parse(self, raw: bytes) -> dict[str, TokenRecord]:
        try:
            doc = json.loads(raw) if raw.strip() else {"tokens": []}
            out = {}
            for t in doc["tokens"]:
                r = TokenRecord(id=t["id"], name=t["name"], scopes=tuple(t["scopes"]), created=t["created"],
                                expires=t["expires"], sha256=t["sha256"], revoked=t.get("revoked"))
                out[r.id] = r
            return out
        except (ValueError, KeyError, TypeError) as exc:
            # A broken store must not open anything: every token is then refused (and the CLI says why).
            raise ValueError(f"{self.path}: not a token store ({exc})") from None

    def records(self) -> list[TokenRecord]:
        return sorted(self._load().values(), key=lambda r: r.created)

    def authenticate(self, authorization: str | None, now: dt.datetime | None = None) -> TokenRecord:
        """The record of a ``Bearer`` token, or :class:`Denied` (401) saying why without echoing it."""
        if not authorization:
            raise Denied(401, "a bearer token is required for this route")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Denied(401, "expected 'Authorization: Bearer <token>'")
        m = _TOKEN_RE.fullmatch(token.strip())
        if not m:
            raise Denied(401, "not a token of this API")
        try:
            rec = self._load().get(m.group(1))
        except (OSError, ValueError):
            raise Denied(401, "tokens cannot be checked now") from None
        if rec is None or not hmac.compare_digest(rec.sha256, _hash(m.group(2))):
            raise Denied(401, "unknown token", m.group(1) if rec else None)
        state = rec.state(now)
        if state != "active":
            raise Denied(401, f"token {rec.id} is {state}", rec.id)
        return rec

    # ---- writing (the CLI)
    def _write(self, records: Iterable[TokenRecord]) -> None:
        assert self.path is not None
        owner = None
        try:
            st = self.path.stat()
            owner = (st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass
        doc = {"tokens": [{**asdict(r), "scopes": list(r.scopes)} for r in records]}
        write_private(self.path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        if owner is not None and os.geteuid() == 0:  # root edits the service user's file: it stays theirs
            os.chown(self.path, *owner)

    def create(self, name: str, scopes: Sequence[str], expires: dt.datetime) -> tuple[TokenRecord, str]:
        """A new token: its record and the token itself (shown once, never stored)."""
        if self.path is None:
            raise ValueError("[auth] tokens_file is not set in the API config")
        bad = [s for s in scopes if s not in SCOPES or s == OPEN]
        if bad or not scopes:
            raise ValueError(f"--scope: expected some of {', '.join(s for s in SCOPES if s != OPEN)} "
                             f"(open needs no token), got {', '.join(bad) or 'none'}")
        if not re.fullmatch(r"[\w .@:/()+-]{1,80}", name):
            raise ValueError("--name: 1 to 80 letters, digits, spaces and . @ : / ( ) + - _")
        records = self._load()
        tid = secrets.token_hex(4)
        while tid in records:
            tid = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        rec = TokenRecord(id=tid, name=name, scopes=tuple(dict.fromkeys(scopes)), created=_iso(_now()) or "",
                          expires=_iso(expires) or "", sha256=_hash(secret))
        self._write([*records.values(), rec])
        return rec, f"cityos_{tid}_{secret}"

    def revoke(self, token_id: str) -> TokenRecord:
        if not _ID_RE.fullmatch(token_id):
            raise ValueError(f"expected a token id (8 hex digits, as `token list` shows), got {token_id!r}")
        records = self._load()
        if token_id not in records:
            raise ValueError(f"no token {token_id}")
        rec = records[token_id]
        if not rec.revoked:
            rec = replace(rec, revoked=_iso(_now()))
            self._write([rec if r.id == token_id else r for r in records.values()])
        return rec
