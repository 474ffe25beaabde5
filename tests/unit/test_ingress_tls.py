"""The ingress certificate: loaded from files, reloaded when they change, a half-rotated pair ignored."""

from __future__ import annotations

from pathlib import Path

import trustme
from cryptography import x509

from webhook_operator.ingress.tls import ReloadingCertificate, self_signed


def write_pair(ca: trustme.CA, cert_path: Path, key_path: Path) -> None:
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert_path))
    issued.private_key_pem.write_to_path(str(key_path))


def test_unchanged_files_are_not_reloaded_and_changed_ones_are(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(trustme.CA(), cert, key)
    reloading = ReloadingCertificate(cert, key)
    assert reloading.reload_if_changed() is False
    write_pair(trustme.CA(), cert, key)
    assert reloading.reload_if_changed() is True
    assert reloading.reload_if_changed() is False


def test_a_certificate_that_does_not_match_the_key_yet_keeps_the_old_pair(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(trustme.CA(), cert, key)
    reloading = ReloadingCertificate(cert, key)
    # Half-way through a rotation: the new certificate is there, its key not yet.
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    assert reloading.reload_if_changed() is False
    key.unlink()
    assert reloading.reload_if_changed() is False  # unreadable: also kept


def test_self_signed_covers_loopback_and_keeps_its_key_private(tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert key_path.stat().st_mode & 0o077 == 0
    ReloadingCertificate(None, None).close()
