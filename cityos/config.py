"""TOML config loading shared by the gateway and the ingest: one place that turns pydantic errors into messages
a field technician can act on ("mqtt.port: Input should be a valid integer, got 'abc'")."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the field and the problem."""


def format_validation_error(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*prefix, *err.get("loc", ())))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (not a setting here; check the spelling)"
        elif err.get("type") == "missing":
            msg = "required setting is missing"
        else:
            got = err.get("input")
            if not isinstance(got, dict | list) and got is not None:
                msg = f"{msg}, got {got!r}"[:200]
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{format_validation_error(exc)}") from None


def load_toml(model: type[M], path: str | Path) -> M:
    return validate(model, read_toml(path), str(path))


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return v.rstrip("/")


#: An HTTP(S) base URL without its trailing slash (InfluxDB, Grafana): checked where a config names it.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


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
