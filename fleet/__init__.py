"""The fleet registry, cloud side: who each gateway is and what it may do.

Public face: :class:`fleet.registry.Registry` (identities, the broker's files), :class:`fleet.pki.CertificateAuthority`
(the private CA), :func:`fleet.broker.acl_text` / :func:`fleet.broker.tls_listener` (Mosquitto's ACL and listener).
Imported by module, so the CLI loads ``cryptography`` only for the commands that need it.
"""
