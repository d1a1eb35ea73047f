"""TOML config loading shared by the gateway and the ingest: one place that turns pydantic errors into messages
a field technician can act on ("mqtt.port: Input should be a valid integer, got 'abc'").

Every problem with a config file is a :class:`ConfigError` with a message naming the file (and the line, or the
setting), never a traceback: a missing file, a directory, an unreadable file, bytes that are not UTF-8, a TOML
syntax error, a setting of the wrong type or out of range. A message never repeats the value given for a secret
(a password, a B-route ID, a token, a key: see :func:`is_secret_setting`), so an error pasted into a ticket or
left in a journal does not leak it; values of other settings are shown, short, because "got 70000" is what
makes a typo obvious.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, SecretBytes, SecretStr, StringConstraints, ValidationError

from cityos.wire import ID_PATTERN

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the field and the problem."""


#: Settings whose values are secrets by their name: a message never shows what was given for them.
_SECRET_NAME = re.compile(r"pass|secret|token|key|rbid|cred|psk|auth|salt|cookie|private", re.IGNORECASE)

#: Longest value an error message repeats (a long value is no typo to spot, and may be pasted content).
_ECHO_MAX_CHARS = 60


def is_secret_setting(loc: tuple[str | int, ...] | list[str | int]) -> bool:
    """True if the setting at ``loc`` (``("mqtt", "password")``, ``("sources", 0, "rbid")``) is named like a
    secret: a password, token, key, B-route ID... Any part of the path counts (a table ``[secrets]`` is one)."""
    return any(isinstance(p, str) and _SECRET_NAME.search(p) for p in loc)


def _secret_field(model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> bool:
    """True if ``loc`` leads, through ``model``'s fields, to a field typed ``SecretStr``/``SecretBytes`` or
    declared with ``repr=False`` (how a model marks a value it keeps out of its own repr)."""
    annotation: Any = model
    for part in loc:
        candidates = _model_types(annotation)
        if isinstance(part, int):
            annotation = _item_types(annotation)
            continue
        annotation = None
        for m in candidates:
            field = m.model_fields.get(part)
            if field is None:
                continue
            if field.repr is False or _has_secret_type(field.annotation):
                return True
            annotation = field.annotation
        if annotation is None:
            return False
    return False


def _flatten(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _flatten(args[0])
    if args and get_origin(annotation) in (Union, types.UnionType):
        return [t for a in args for t in _flatten(a)]
    return [annotation]


def _has_secret_type(annotation: Any) -> bool:
    return any(isinstance(t, type) and issubclass(t, SecretStr | SecretBytes) for t in _flatten(annotation))


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    return [t for t in _flatten(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]


def _item_types(annotation: Any) -> Any:
    """The element type of a list/tuple/dict annotation (a Union of them, flattened), else None."""
    items: list[Any] = []
    for t in _flatten(annotation):
        args = get_args(t)
        if args:
            items.append(args[-1])
    return Union[tuple(items)] if len(items) > 1 else (items[0] if items else None)  # noqa: UP007


def format_validation_error(
    exc: ValidationError, prefix: tuple[str | int, ...] = (), model: type[BaseModel] | None = None
) -> str:
    """One line per problem: the setting's dotted path and what is wrong with it.

    The value given is repeated only for settings that are not secrets (by name, or by type when ``model`` is
    given: ``SecretStr``, ``repr=False``), only when it is a short scalar, and never for a value pydantic was asked
    to hide. Pydantic's own messages name what was expected without quoting the input.
    """
    lines = []
    for err in exc.errors():
        raw_loc = tuple(err.get("loc", ()))
        loc = ".".join(str(p) for p in (*prefix, *raw_loc))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (not a setting here; check the spelling)"
        elif err.get("type") == "missing":
            msg = "required setting is missing"
        elif not (is_secret_setting((*prefix, *raw_loc)) or _secret_field(model, raw_loc)):
            got = err.get("input")
            if isinstance(got, bool | int | float) or (isinstance(got, str) and len(got) <= _ECHO_MAX_CHARS):
                msg = f"{msg}, got {got!r}"
        lines.append(f"{loc or '(top level)'}: {msg}"[:300])
    return "\n".join(lines)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict, or a ConfigError naming the file (and the line) and the problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{p}: config file not readable by this user (uid {os.geteuid()})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{p}: not UTF-8 text (line {line}): a config file is TOML, which is UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{format_validation_error(exc, model=model)}") from None


def load_toml(model: type[M], path: str | Path) -> M:
    return validate(model, read_toml(path), str(path))


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return v.rstrip("/")


#: An HTTP(S) base URL without its trailing slash (InfluxDB, Grafana): checked where a config names it.
HttpUrl = Annotated[str, AfterValidator(_http_url)]

#: A gateway's or a device's id in a config (pydantic), with the wire contract's pattern (:mod:`cityos.wire`
#: has its own, msgspec, types): an id a config accepts is one the wire accepts.
GatewayId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def dump_toml(data: dict[str, Any], header: str = "") -> str:
    """``data`` as TOML, the inverse of :func:`read_toml` for configs: the one writer the project's tools use
    (the demo's and the tests' gateway and ingest configs). ``None`` values are left out; a :class:`Path` is its
    string; dicts become tables and lists of dicts arrays of tables. (``tomllib`` reads TOML but does not write
    it, and the configs need nothing a TOML library would add.)"""
    out: list[str] = [f"# {line}" for line in header.splitlines()]
    _table(out, (), data, array=False)
    return "\n".join(out).lstrip("\n") + "\n"


def _table(out: list[str], path: tuple[str, ...], data: dict[str, Any], *, array: bool) -> None:
    if path:
        name = ".".join(_key(p) for p in path)
        out += ["", f"[[{name}]]" if array else f"[{name}]"]
    subtables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            subtables.append((k, v))
        else:
            out.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in subtables:
        if isinstance(v, dict):
            _table(out, (*path, k), v, array=False)
        else:
            for item in v:
                _table(out, (*path, k), item, array=True)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def toml_value(v: Any) -> str:
    """One TOML value (JSON's string escapes are valid TOML basic-string escapes)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return ("-inf" if v < 0 else "inf") if math.isinf(v) else "nan"
        return repr(v)
    if isinstance(v, Path):
        return json.dumps(str(v), ensure_ascii=False)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def config_hash(data: dict[str, Any]) -> str:
    """Short hash of a gateway's effective config: the agent reports it in its status, the fleet registry stores
    the hash of the config it issued, and the fleet view shows drift when they differ. One function on both sides
    so that the same TOML gives the same hash."""
    import hashlib

    blob = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
