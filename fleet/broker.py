"""Mosquitto's TLS listener and ACL file, generated: the one place that says who may publish and read what.

Identities are certificate CNs (``use_identity_as_username``):

* a **gateway** is its gateway id (``^[a-z0-9][a-z0-9_-]{0,62}$``). Pattern lines give every gateway its own
  topics and nothing else: publish telemetry, its retained status and commissioning probes under
  ``cityos/v1/<its id>/``, read the receipts addressed to it (the commissioning check's round trip). It cannot
  read another gateway's status, nor anything else.
* a **service** is ``svc.<name>``: the dot keeps it out of the gateway id space, so no gateway can be named like a
  service, and the pattern lines substituted with a service's name give topics the ingest rejects (``bad_topic``).
  Its grants are listed under its name (:data:`SERVICE_GRANTS`): least privilege per role.
* a **revoked** identity gets ``topic deny #`` under its name. Mosquitto checks a user's deny lines before any
  grant or pattern, and reloads the ACL file on SIGHUP: the revoked gateway's next publish is refused while every
  other client stays connected. Its certificate is on the CRL too, which refuses its new TLS connections from the
  broker's next restart at the latest (docs/operations.md, "Revocation").

The developer's stack adds :data:`DEV_GRANTS` (a simulator that speaks for many gateways on one connection, and
test tools); a production broker config never has them (:func:`acl_text` with ``dev=False``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cityos import wire
from cityos.wire import TOPIC_ROOT

__all__ = ["DEV_GRANTS", "GATEWAY_PATTERNS", "SERVICE_GRANTS", "acl_text", "tls_listener",
           "write_production_config"]

#: What every gateway may do, by its own identity (%u = the certificate's CN).
GATEWAY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("write", f"{TOPIC_ROOT}/%u/telemetry"),
    ("write", f"{TOPIC_ROOT}/%u/status"),
    ("write", f"{TOPIC_ROOT}/%u/probe"),
    ("read", f"{TOPIC_ROOT}/%u/receipt"),
)

#: Services: the ingest reads telemetry and status and writes receipts (only to the gateway a probe came from:
#: the topic carries the id the broker already checked); the fleet registry reads status and writes the
#: ``registered`` status of a gateway that has not spoken yet; nothing else (neither may publish telemetry).
SERVICE_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "svc.ingest": (
        ("read", f"{TOPIC_ROOT}/+/telemetry"),
        ("read", f"{TOPIC_ROOT}/+/status"),
        ("read", f"{TOPIC_ROOT}/+/probe"),
        ("write", f"{TOPIC_ROOT}/+/receipt"),
        ("readwrite", wire.ingest_claim_topic("+")),  # one process per session (ingest.mqtt_in)
    ),
    "svc.fleet": (("readwrite", f"{TOPIC_ROOT}/+/status"),),
}

#: Developer's stack only. ``dev.loadgen``: the city-scale load generator publishes for thousands of simulated
#: gateways over a few connections. ``dev.tools``: tests and benchmarks that publish hostile input under any
#: topic and watch everything.
DEV_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "dev.loadgen": (("write", f"{TOPIC_ROOT}/+/telemetry"), ("write", f"{TOPIC_ROOT}/+/status")),
    "dev.tools": (("readwrite", f"{TOPIC_ROOT}/#"),),
}


def acl_text(revoked: Iterable[str] = (), *, dev: bool = False,
             extra: Mapping[str, Iterable[tuple[str, str]]] | None = None) -> str:
    """The ACL file: revoked identities first (deny all), then services, then the gateway patterns."""
    lines = ["# Written by cityos fleet: regenerated from the registry, edits are lost.", ""]
    grants: dict[str, tuple[tuple[str, str], ...]] = dict(SERVICE_GRANTS)
    if dev:
        grants.update(DEV_GRANTS)
    for name, rules in (extra or {}).items():
        grants[name] = tuple(rules)
    revoked = sorted(set(revoked))
    for name in revoked:
        lines += [f"user {name}", "topic deny #", ""]
    for name, rules in grants.items():
        if name in revoked:
            continue
        lines.append(f"user {name}")
        lines += [f"topic {access} {topic}" for access, topic in rules]
        lines.append("")
    lines.append("# every gateway: its own topics only")
    lines += [f"pattern {access} {topic}" for access, topic in GATEWAY_PATTERNS]
    return "\n".join(lines) + "\n"


def tls_listener(port: int, bind: str | None, *, ca_file: Path, cert_file: Path, key_file: Path,
                 crl_file: Path, acl_file: Path) -> list[str]:
    """mosquitto.conf lines of the mutual-TLS listener: a client certificate from our CA or no connection."""
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    return [
        listener,
        "protocol mqtt",
        f"cafile {ca_file}",
        f"certfile {cert_file}",
        f"keyfile {key_file}",
        f"crlfile {crl_file}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {acl_file}",
    ]


def write_production_config(registry: Any, out: Path, *, listen: str = "0.0.0.0") -> list[Path]:
    """The broker's files for a deployment, from ``registry`` (a :class:`fleet.registry.Registry`): a config
    snippet for ``/etc/mosquitto/conf.d/`` with the one TLS listener (no plaintext listener at all: the cloud
    side's own services connect with their certificates too), and the CA, server certificate and key, CRL and
    ACL beside it. The registry remembers ``out``, so `cityos fleet revoke` refreshes the ACL and CRL there."""
    from fleet.pki import write_private

    b = registry.broker()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = registry.broker_files(b.host)
    written: list[Path] = []
    for key, name, mode in (("ca_file", "ca.crt", 0o644), ("cert_file", "server.crt", 0o644),
                            ("key_file", "server.key", 0o640), ("crl_file", "crl.pem", 0o644),
                            ("acl_file", "acl", 0o644)):
        write_private(out / name, Path(files[key]).read_bytes(), mode)
        written.append(out / name)
    conf = [
        "# Written by `cityos fleet broker-config` from the fleet registry. Include it from mosquitto.conf",
        "# (Debian: copy or link it into /etc/mosquitto/conf.d/). server.key must be readable by the mosquitto",
        "# user: `chgrp mosquitto server.key` (mode 0640).",
        "per_listener_settings false",
        *tls_listener(b.port, None if listen in ("", "0.0.0.0") else listen, ca_file=out / "ca.crt",
                      cert_file=out / "server.crt", key_file=out / "server.key", crl_file=out / "crl.pem",
                      acl_file=out / "acl"),
        "persistence true",
        # The ingest's durable session must not drop messages while it restarts (default 1000).
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "connection_messages true",
    ]
    write_private(out / "cityos.conf", "\n".join(conf) + "\n", 0o644)
    written.append(out / "cityos.conf")
    registry.set_broker(b.model_copy(update={"config_dir": out}))
    return written
