"""TOML config loading shared by the gateway and the ingest: one place that turns pydantic errors into messages
a field technician can act on ("mqtt.port: Input should be a valid integer, got 'abc'")."""

from __future__ import annotations

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
