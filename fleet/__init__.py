"""The fleet registry, cloud side: who each gateway is, what it may do, and how it reaches the field.

Public face, by module (imported by module, so the CLI loads ``cryptography`` and paho only for the commands that
need them): :class:`fleet.registry.Registry` (identities, gateway records, the broker's files),
:class:`fleet.pki.CertificateAuthority` (the private CA and its CRL), :func:`fleet.broker.acl_text` /
:func:`fleet.broker.tls_listener` / :func:`fleet.broker.write_production_config` (Mosquitto's ACL and listener),
:func:`fleet.influxdb.provision` (InfluxDB's least-privilege users), :func:`fleet.status.read_statuses` /
:func:`fleet.status.view` (the fleet view), :func:`fleet.bundle.build_bundle` (first-boot bundles).
"""
