"""The gateway's TOML config. Every section is a pydantic model with ``extra="forbid"`` so a typo is an error that
names the field, not a silently ignored setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cityos.config import ConfigError, GatewayId, config_hash, format_validation_error, read_toml  # noqa: F401 (re-exported)
from cityos.credentials import MqttLogin
from cityos.simclock import ScaledClock
from edge.sources.base import SourceConfig, known_types, plugin


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Section):
    id: GatewayId
    name: str = ""


class MqttSection(MqttLogin):
    """The uplink's broker, login and pacing. Mutual TLS by default: ``ca_file`` (the fleet CA), ``cert_file``
    (CN = this gateway's id) and ``key_file`` (0600), as the first-boot bundle writes them."""

    model_config = ConfigDict(extra="forbid")

    keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: Messages published and not yet acknowledged by the broker (PUBACK) at any time.
    max_inflight: int = Field(default=16, ge=1, le=1000)
    readings_per_message: int = Field(default=200, ge=1, le=500)
    #: A live reading waits up to this long for others to share its message (and its PUBACK and its outbox
    #: delete): at 100 readings/s that is ~10 messages/s instead of 100. 0 sends each reading at once.
    linger_s: float = Field(default=0.1, ge=0, le=10)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    #: No PUBACK for this long while connected means the connection is wedged: reconnect.
    ack_timeout_s: float = Field(default=30.0, gt=0)
    status_interval_s: float = Field(default=60.0, gt=0)


class OutboxSection(_Section):
    path: Path
    #: Bound on stored readings; beyond it the drop policy applies and every drop is counted.
    max_readings: int = Field(default=2_000_000, ge=100)
    #: drop_oldest keeps the newest data (what an operator needs to see now); drop_newest keeps the history.
    drop_policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    #: FULL survives power loss (fsync per commit); NORMAL survives a process crash only.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: Readings older than this when sent are marked ``backfill`` (late: not for live alerting).
    backfill_after_s: float = Field(default=120.0, gt=0)
    #: Room kept beside the outbox for its own bookkeeping (deleting what was sent) on a full disk; default 1/256
    #: of the filesystem, 256 KiB to 8 MiB (edge/outbox.py). 0 turns the reserve off.
    reserve_bytes: int | None = Field(default=None, ge=0)


class HealthSection(_Section):
    #: Health readings (``gateway_health`` + one ``source_health`` per source) every this many seconds.
    interval_s: float = Field(default=60.0, ge=1)
    enabled: bool = True


class GatewayConfig(_Section):
    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection
    health: HealthSection = HealthSection()
    #: Simulation only: run the data clock on the scenario's scaled clock (a city day in minutes). A field
    #: gateway leaves this out and uses its NTP-disciplined system clock.
    clock: ScaledClock | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    sources: list[SourceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return self


def parse_config(data: dict[str, Any], source: str = "config") -> GatewayConfig:
    """Validate a config dict; each ``[[sources]]`` entry is validated by its plug-in's own model."""
    errors: list[str] = []
    sources: list[SourceConfig] = []
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list):
        raise ConfigError(f"{source}: invalid configuration\nsources: must be a list of [[sources]] tables")
    for i, raw in enumerate(raw_sources):
        if not isinstance(raw, dict):
            errors.append(f"sources.{i}: must be a table")
            continue
        kind = raw.get("type")
        found = plugin(kind) if isinstance(kind, str) else None
        if found is None:
            errors.append(f"sources.{i}.type: unknown source type {kind!r} (known: {', '.join(known_types())})")
            continue
        try:
            sources.append(found.config_model.model_validate(raw))
        except ValidationError as exc:
            errors.append(format_validation_error(exc, ("sources", i)))
    rest = {k: v for k, v in data.items() if k != "sources"}
    try:
        cfg = GatewayConfig.model_validate({**rest, "sources": [{"type": "_", "name": "_"}]})
    except ValidationError as exc:
        errors.append(format_validation_error(exc))
        cfg = None
    if errors:
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(errors))
    assert cfg is not None
    try:
        return GatewayConfig.model_validate({**cfg.__dict__, "sources": sources})
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{format_validation_error(exc)}") from None


def load_config(path: str | Path) -> GatewayConfig:
    return parse_config(read_toml(path), str(path))
