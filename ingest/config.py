"""Ingest configuration: pydantic models loaded from TOML.

Every section forbids unknown keys, and a load error is a :class:`ConfigError` whose message names the field and
the problem, e.g. ``influx.batch_lines: Input should be a valid integer, got 'many'``.

Example (the common keys; every key and its default: docs/ingest.md, "Configuration reference")::

    [mqtt]
    host = "mqtt.city.example"
    port = 8883
    ca_file = "/etc/cityos/ca.crt"          # the fleet CA (signs the broker's certificate)
    cert_file = "/etc/cityos/ingest.crt"    # CN = svc.ingest: its ACL role on the broker
    key_file = "/etc/cityos/ingest.key"     # 0600, owned by the service user
    client_id = "cityos-ingest"  # the session is <client_id>.<host_id>.<instance>: unique by construction
    # instance = "0"             # a second ingest process on the same machine: "1", with its own data_dir
    session_expiry_s = 604800    # 7 days of queueing while the ingest is down
    # share_group = "ingest"     # -> subscribe $share/ingest/<filter> (see docs/ingest.md on Mosquitto 2.0.11)
    receive_maximum = 10000      # MQTT v5 Receive Maximum: unacked messages the broker may send us

    [influx]
    url = "http://127.0.0.1:8086"
    db = "cityos"
    username = "cityos_ingest"   # HTTP Basic, a user with WRITE only; on InfluxDB 2.x/3.x the password is the token
    password_file = "/etc/cityos/influx-ingest.password"   # 0600
    batch_lines = 5000
    flush_interval_s = 1.0

    [ingest]
    data_dir = "/var/lib/cityos-ingest"   # required: dead-letter DB and health.json
    stall_after_s = 30
    health_port = 0              # 0 = no HTTP health endpoint
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cityos import wire
from cityos.config import ConfigError, dump_toml, load_toml, validate
from cityos.credentials import MqttLogin
from cityos.influx import InfluxSettings

__all__ = ["ConfigError", "InfluxConfig", "IngestConfig", "IngestSection", "MqttConfig", "load_config"]

_SHARE_GROUP_RE = re.compile(r"^[^/+#$\s]{1,64}$")
_NAME_PART = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_HOST_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def this_host() -> str:
    """This machine's name as a client-id part: its short hostname, with anything but ``[A-Za-z0-9_-]`` as ``-``."""
    name = _HOST_SAFE.sub("-", socket.gethostname().split(".")[0])[:63].strip("-_")
    return name or "host"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(MqttLogin):
    """The broker and the ingest's identity there (mutual TLS by default: the ``svc.ingest`` certificate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The first part of the MQTT client id. The broker keeps one durable session per client id, and the session
    #: is what an ingest process receives (and is redelivered) through, so two processes must never share one:
    #: the id is ``<client_id>.<host_id>.<instance>`` (:attr:`session_id`), unique by construction across
    #: machines (the host) and on one machine (the instance; a second process with the same one is refused at
    #: start, see ``ingest.service``).
    client_id: str = Field(default="cityos-ingest", pattern=_NAME_PART)
    #: This machine's part of the id; default: its hostname. Set it where hostnames are not stable (containers).
    host_id: str | None = Field(default=None, pattern=_NAME_PART)
    #: This process's part of the id on its machine: "0", "1"... (one data_dir each).
    instance: str = Field(default="0", pattern=_NAME_PART)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    share_group: str | None = None
    receive_maximum: int = Field(default=10000, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=5, le=65535)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=30, ge=1)

    @field_validator("share_group")
    @classmethod
    def _share_group(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not _SHARE_GROUP_RE.match(v):
            raise ValueError("must be 1-64 characters without '/', '+', '#', '$' or spaces")
        return v

    @property
    def session_id(self) -> str:
        """The MQTT client id: it names this process's durable session on the broker."""
        return f"{self.client_id}.{self.host_id or this_host()}.{self.instance}"

    def filters(self) -> list[str]:
        """The topic filters to subscribe to (wrapped in ``$share/<group>/`` when a share group is set)."""
        base = [wire.TELEMETRY_FILTER, wire.STATUS_FILTER, wire.PROBE_FILTER]
        if self.share_group:
            return [f"$share/{self.share_group}/{f}" for f in base]
        return base


class InfluxConfig(InfluxSettings):
    """Where to write (the kernel's :class:`~cityos.influx.InfluxSettings`) and how to batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_lines: int = Field(default=5000, ge=1, le=100_000)
    #: Also flush when the uncompressed body reaches this size (InfluxDB 1.x max-body-size is 25 MB).
    batch_bytes: int = Field(default=8_000_000, ge=1024, le=25_000_000)
    flush_interval_s: float = Field(default=1.0, gt=0)
    gzip: bool = True
    #: Concurrent write requests (one HTTP connection each); acks still go out in receive order.
    writers: int = Field(default=2, ge=1, le=16)
    #: Cap of the exponential retry backoff while InfluxDB fails.
    retry_max_s: float = Field(default=10.0, gt=0)



class IngestSection(_Section):
    data_dir: Path
    stall_after_s: float = Field(default=30.0, gt=0)
    health_port: int = Field(default=0, ge=0, le=65535)
    max_past_s: int = Field(default=wire.DEFAULT_MAX_PAST_S, ge=0)
    max_future_s: int = Field(default=wire.DEFAULT_MAX_FUTURE_S, ge=0)
    #: Received messages waiting to be decoded, at most; beyond it the MQTT thread waits (backpressure).
    max_pending_messages: int = Field(default=20000, ge=10)
    #: Worker processes that decode/validate (0 = in the service process). Validation is most of the CPU.
    decode_workers: int = Field(default=2, ge=0, le=64)
    #: On SIGTERM, how long to keep retrying the last flush before giving up (unacked messages are redelivered).
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    log_every_s: float = Field(default=10.0, gt=0)
    #: How often the ingest writes its own health into InfluxDB (measurement ``ingest_health``; 0: never), for
    #: the fleet dashboard's throughput, dead-letter and stall panels and the "ingest stalled" alert.
    self_metrics_interval_s: float = Field(default=10.0, ge=0)


class IngestConfig(_Section):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    influx: InfluxConfig = Field(default_factory=InfluxConfig)
    ingest: IngestSection

    @classmethod
    def from_toml(cls, path: str | Path) -> IngestConfig:
        return load_toml(cls, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> IngestConfig:
        return validate(cls, data, source)

    def to_toml(self) -> str:
        """Render as TOML (for starting the service as a subprocess); ``None`` values are omitted."""
        return dump_toml(self.model_dump(mode="json"))


def load_config(path: str | Path) -> IngestConfig:
    """Load and validate a TOML file; raises :class:`ConfigError` naming the field and the problem."""
    return IngestConfig.from_toml(path)
