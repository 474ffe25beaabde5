"""The ingress's server certificate: from files re-read when they change (a mounted Secret rotates), or
self-signed at start for --dev."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
RELOAD_INTERVAL_S = 5.0


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A fresh key and a certificate for localhost, 127.0.0.1, ::1 and this host, valid for a year."""
    # Imported here: only --dev without certificate files needs them.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(host),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook-operator ingress (dev)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class ReloadingCertificate:
    """One SSLContext for the server; new connections get the files' current certificate after a change.

    OpenSSL copies a context's certificate into each connection when it starts, so loading a new
    chain into the live context changes nothing for connections already open.
    """

    def __init__(self, cert_path: str | Path | None, key_path: str | Path | None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cert_path is None or key_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="webhook-operator-ingress-")
            cert_path, key_path = self_signed(Path(self._tmp.name))
            log.info("ingress: self-signed certificate (--dev) at %s", cert_path)
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._loaded = self._read()
        self.context.load_cert_chain(self.cert_path, self.key_path)

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_path.read_bytes(), self.key_path.read_bytes()

    def reload_if_changed(self) -> bool:
        """Load the files again if their contents changed; a pair that does not load keeps the old one."""
        try:
            current = self._read()
        except OSError as exc:
            log.warning("ingress: cannot read the TLS certificate files: %s", exc.strerror)
            return False
        if current == self._loaded:
            return False
        try:
            self.context.load_cert_chain(self.cert_path, self.key_path)
        except (ssl.SSLError, OSError) as exc:
            # Half-way through a rotation the certificate may not match the key yet; try again later.
            log.warning("ingress: the new TLS certificate does not load yet (%s); keeping the previous one", exc)
            return False
        self._loaded = current
        log.info("ingress: TLS certificate reloaded from %s", self.cert_path)
        return True

    async def watch(self, interval_s: float = RELOAD_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
