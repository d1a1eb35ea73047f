"""The fleet's private certificate authority (``cryptography``): one client certificate per gateway and service,
the broker's server certificate, and the revocation list.

Why a private CA and not a public one: Mosquitto accepts *any* certificate its ``cafile`` trusts, and with
``use_identity_as_username`` the certificate's CN is the client's identity for the ACL. So the CA must be ours
alone: only the fleet registry issues identities. Why not ``openssl`` on a command line: keys would pass through
argv or temporary files, and each step's errors would be text to parse.

Layout of a CA directory (keys 0600, the directory 0700)::

    ca.crt  ca.key        the CA (EC P-256, 20 years: it is the fleet's root, replaced only by a planned re-key)
    crl.pem               the revocation list, re-signed on every revoke (valid CRL_DAYS: re-sign it before then,
                          `cityos fleet broker-config` does, or the broker refuses every client)
    revoked.json          serial -> (identity, time) of every revoked certificate
    serials.json          serial -> identity of every issued certificate (who a serial was)

Keys are EC P-256: small, fast to generate on the cloud side (a few ms), and every TLS stack on a Pi speaks it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cityos.credentials import write_private

__all__ = ["CA_DAYS", "CLIENT_DAYS", "CRL_DAYS", "CertificateAuthority", "Issued", "write_private"]

CA_DAYS = 20 * 365
#: A client certificate's life: a gateway is re-keyed (`cityos fleet rotate`) well within it.
CLIENT_DAYS = 3 * 365
SERVER_DAYS = 825
#: A CRL's validity; OpenSSL rejects every client once it has passed, so it is generous and re-signed on change.
CRL_DAYS = 365


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM."""

    identity: str
    serial: int
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime

    def write(self, cert_path: Path, key_path: Path) -> None:
        write_private(key_path, self.key_pem, 0o600)
        write_private(cert_path, self.cert_pem, 0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A CA kept in one directory; create it with :meth:`create`, open it with the constructor."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        try:
            self._key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
            self.cert = x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"no CA in {self.dir} (ca.crt and ca.key)") from None
        if not isinstance(self._key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.dir / 'ca.key'}: not an EC key")

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_file(self) -> Path:
        return self.dir / "crl.pem"

    @classmethod
    def create(cls, directory: Path | str, name: str) -> CertificateAuthority:
        """A new CA in ``directory`` (refuses to replace an existing one: every issued identity hangs off it)."""
        d = Path(directory)
        if (d / "ca.key").exists():
            raise FileExistsError(f"{d / 'ca.key'} exists: a CA is already there")
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cityos-telemetry"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(d / "ca.key", _key_pem(key), 0o600)
        write_private(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca = cls(d)
        ca.write_crl()
        return ca

    @classmethod
    def open_or_create(cls, directory: Path | str, name: str) -> CertificateAuthority:
        d = Path(directory)
        return cls(d) if (d / "ca.key").exists() else cls.create(d, name)

    # --- issuing -------------------------------------------------------------------------------------------

    def issue_client(self, identity: str, days: int = CLIENT_DAYS) -> Issued:
        """A client certificate whose CN is ``identity`` (the broker's username for it: its ACL)."""
        return self._issue(identity, days, ExtendedKeyUsageOID.CLIENT_AUTH, sans=())

    def issue_server(self, host: str, sans: tuple[str, ...] = (), days: int = SERVER_DAYS) -> Issued:
        """The broker's certificate for ``host`` (and ``sans``: DNS names or IP addresses clients use)."""
        return self._issue(host, days, ExtendedKeyUsageOID.SERVER_AUTH, sans=(host, *sans))

    def _issue(self, cn: str, days: int, usage: x509.ObjectIdentifier, sans: tuple[str, ...]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))  # a gateway clock a little behind still accepts it
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            names: list[x509.GeneralName] = []
            for s in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    names.append(x509.DNSName(s))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        self._record("serials.json", str(serial), cn)
        return Issued(cn, serial, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), not_after)

    # --- revocation ----------------------------------------------------------------------------------------

    def revoked(self) -> dict[str, dict[str, str]]:
        """serial (decimal string) -> {"identity", "at"} of every revoked certificate."""
        return self._load("revoked.json")

    def revoke(self, serial: int) -> None:
        """Add ``serial`` to the CRL and re-sign it (idempotent)."""
        who = self._load("serials.json").get(str(serial), "?")
        revoked = self.revoked()
        if str(serial) not in revoked:
            revoked[str(serial)] = {"identity": who, "at": _now().isoformat()}
            write_private(self.dir / "revoked.json", json.dumps(revoked, indent=1, sort_keys=True) + "\n", 0o644)
        self.write_crl()

    def write_crl(self, days: int = CRL_DAYS) -> Path:
        """Sign the CRL afresh (also to extend its validity) and write it to ``crl.pem``."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, entry in sorted(self.revoked().items()):
            at = dt.datetime.fromisoformat(entry["at"])
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial)).revocation_date(at).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        write_private(self.crl_file, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.crl_file

    # --- bookkeeping ---------------------------------------------------------------------------------------

    def _load(self, name: str) -> dict:
        try:
            return json.loads((self.dir / name).read_text())
        except FileNotFoundError:
            return {}

    def _record(self, name: str, key: str, value: str) -> None:
        data = self._load(name)
        data[key] = value
        write_private(self.dir / name, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o644)


def certificate_info(pem: bytes) -> dict[str, object]:
    """Identity, serial and validity of a PEM certificate (for the fleet view and the check)."""
    cert = x509.load_pem_x509_certificate(pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "identity": str(cns[0].value) if cns else "",
        "serial": cert.serial_number,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "issuer": cert.issuer.rfc4514_string(),
    }
