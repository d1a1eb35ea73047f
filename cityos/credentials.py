"""Secrets and TLS files as a config names them: one place that reads them and says, naming the setting, what is
wrong (missing, unreadable, readable by others, not PEM, key and certificate not a pair) without ever echoing
what is in them.

Why files and not values in the config: a config is copied around, diffed, pasted into tickets and hashed into the
fleet view; a key or password file is 0600 and owned by the service user, and systemd's ``LoadCredential=`` hands
secrets to services as files too. So a config refers to a secret by path (``password_file``, ``key_file``) and
holds none itself.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cityos.config import ConfigError

__all__ = ["LOOPBACK_HOSTS", "MqttLogin", "TlsFiles", "check_private", "read_secret", "write_private"]

#: Hosts whose traffic never leaves the machine: the only place plaintext MQTT is allowed to go.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

#: Longest secret file read (a password, a token): anything bigger is a wrong path, not a secret.
MAX_SECRET_BYTES = 4096


def _regular_readable(path: Path, setting: str) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{setting}: {path} is not readable by this user (uid {os.geteuid()})")
    return st


def check_private(path: Path, setting: str) -> None:
    """A secret file must be readable by its owner only: ConfigError naming ``setting`` otherwise."""
    st = _regular_readable(path, setting)
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{setting}: {path} is readable or writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )


def read_secret(path: Path, setting: str) -> str:
    """The secret in ``path`` (0600, one line; a trailing newline is not part of it)."""
    check_private(path, setting)
    try:
        raw = path.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{setting}: {path} is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None
    if not text or "\n" in text:
        raise ConfigError(f"{setting}: {path} must hold the secret on one line")
    return text


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write atomically with ``mode`` from the first byte (no window where a key or a token store is readable by
    others): the one writer of private files (fleet keys and passwords, the API's token store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class TlsFiles(BaseModel):
    """The TLS files of one client connection: the CA that signs the server, and our own certificate and key.

    Mixed into a config section (``[mqtt]``); :meth:`client_context` is where they are loaded, so a bad file is a
    ConfigError at start naming ``<section>.ca_file`` etc., never a thread dying later.
    """

    model_config = ConfigDict(extra="forbid")

    #: CA certificate(s) that sign the server's certificate (PEM), the only ones trusted. None: the system's trust
    #: store.
    ca_file: Path | None = None
    #: This client's certificate (PEM): its identity (CN = gateway id) for a broker that requires one.
    cert_file: Path | None = None
    #: Its private key (PEM, mode 0600).
    key_file: Path | None = None

    def tls_problems(self, section: str = "") -> list[str]:
        """Incoherent settings, without touching the files (the offline check and model validators use it)."""
        p = f"{section}." if section else ""
        out = []
        if (self.cert_file is None) != (self.key_file is None):
            have, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            out.append(f"{p}{missing}: required with {p}{have} (a client certificate needs its key)")
        return out

    def client_context(self, section: str) -> ssl.SSLContext:
        """An SSLContext that verifies the server (TLS 1.2+) and presents our certificate, or ConfigError."""
        problems = self.tls_problems(section)
        if problems:
            raise ConfigError(problems[0])
        if self.ca_file is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system's trust store
        else:
            _regular_readable(self.ca_file, f"{section}.ca_file")
            try:
                # Given a cafile, Python loads that CA only and not the system's ~140 public ones, which would
                # also be trusted to sign the broker and which every context would hold (~0.8 MB resident).
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"{section}.ca_file: {self.ca_file} holds no usable PEM CA certificate ({_ssl_reason(exc)})"
                ) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            _regular_readable(self.cert_file, f"{section}.cert_file")
            check_private(self.key_file, f"{section}.key_file")
            try:
                ctx.load_cert_chain(certfile=str(self.cert_file), keyfile=str(self.key_file))
            except ssl.SSLError as exc:
                reason = _ssl_reason(exc)
                if "KEY_VALUES_MISMATCH" in reason.upper() or "key values mismatch" in reason.lower():
                    raise ConfigError(
                        f"{section}.key_file: {self.key_file} is not the key of {section}.cert_file {self.cert_file}"
                    ) from None
                raise ConfigError(
                    f"{section}.cert_file/key_file: cannot load {self.cert_file} with {self.key_file} ({reason})"
                ) from None
        return ctx


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc.__class__.__name__)


class MqttLogin(TlsFiles):
    """How a client reaches the broker and who it is there: the part of ``[mqtt]`` the gateway and the ingest share.

    TLS is on by default and plaintext is refused unless the broker is on this machine ("TLS on every hop that
    leaves the machine"). With the fleet's broker the client certificate *is* the login (Mosquitto
    ``use_identity_as_username``); ``username`` + ``password_file`` are for brokers that want a password as well.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = True
    username: str | None = None
    #: A 0600 file holding the broker password (with ``username``).
    password_file: Path | None = None

    @model_validator(mode="after")
    def _coherent(self) -> MqttLogin:
        problems = self.transport_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def transport_problems(self, section: str = "") -> list[str]:
        """Settings that contradict each other (checked offline, without the files)."""
        p = f"{section}." if section else ""
        out = self.tls_problems(section)
        if not self.tls:
            if self.host not in LOOPBACK_HOSTS:
                out.append(f"{p}tls: plaintext MQTT to {self.host!r} would leave this machine; set tls = true "
                           "(plaintext is only allowed to a broker on 127.0.0.1/localhost)")
            if self.port == 8883:
                out.append(f"{p}port: 8883 is MQTT over TLS; set tls = true (or use the broker's plaintext port)")
            if self.ca_file or self.cert_file or self.key_file:
                out.append(f"{p}tls: ca_file/cert_file/key_file are set but tls = false")
        elif self.port == 1883:
            out.append(f"{p}port: 1883 is plaintext MQTT; the broker's TLS port is usually 8883")
        if self.password_file is not None and not self.username:
            out.append(f"{p}username: required with {p}password_file")
        return out

    def load_files(self, section: str = "mqtt") -> None:
        """Load every file this login names, as :meth:`configure` will: ConfigError now rather than later."""
        if self.tls:
            self.client_context(section)
        if self.username and self.password_file:
            read_secret(self.password_file, f"{section}.password_file")

    def configure(self, client: Any, section: str = "mqtt") -> None:
        """Apply TLS and login to a paho ``Client`` (duck-typed: the kernel does not import paho). Every file is
        loaded here, so a missing or bad one is a ConfigError naming ``<section>.<setting>`` before any thread
        runs."""
        if self.tls:
            client.tls_set_context(self.client_context(section))
        if self.username:
            pw = read_secret(self.password_file, f"{section}.password_file") if self.password_file else None
            client.username_pw_set(self.username, pw)
