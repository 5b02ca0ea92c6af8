"""Server identity: create, reuse and inspect the TLS certificate, and fetch a peer's certificate safely."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from specai.config import Settings
from specai.errors import TlsError
from specai.files import ensure_private_dir, write_private
from specai.identity.fingerprint import fingerprint_der

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class CertInfo:
    """What a user needs to know about a certificate."""

    subject: str
    san: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    pem: str

    def as_dict(self) -> dict[str, object]:
        """The `/cert` and `cert show --json` shape."""
        return {
            "fingerprint": self.fingerprint,
            "certificate_pem": self.pem,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "subject": self.subject,
            "san": list(self.san),
        }


@dataclass(frozen=True)
class CertPaths:
    """The certificate and PKCS#8 key the server should load."""

    cert: Path
    key: Path
    generated: bool
    warnings: tuple[str, ...] = ()


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Describe a parsed certificate."""
    subject = ", ".join(rdn.rfc4514_string() for rdn in cert.subject.rdns)  # "CN=..., O=..." in cert order
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = tuple(str(name.value) for name in ext)
    except x509.ExtensionNotFound:
        san = ()
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertInfo(
        subject=subject,
        san=san,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint_der(der),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def cert_info_from_der(der: bytes) -> CertInfo:
    """Describe a DER certificate (as fetched from a peer)."""
    return cert_info(x509.load_der_x509_certificate(der))


def read_cert(path: Path) -> CertInfo:
    """Describe the first certificate in a PEM file."""
    return cert_info(_load_cert(path))


def create_self_signed(
    host: str, extra_sans: tuple[str, ...] = (), validity_days: int = 365
) -> tuple[bytes, bytes]:
    """Make a self-signed P-256 server certificate; return (cert PEM, PKCS#8 key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"spec-ai-server-{host or 'localhost'}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spec-ai"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(host, extra_sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,  # it signs itself: BoringSSL (Bun: Claude Code) trusts it only then
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_server_cert(settings: Settings) -> CertPaths:
    """Return the cert/key to serve: the configured pair, the saved self-signed pair, or a new one saved once."""
    server = settings.server
    if server.tls_cert_path or server.tls_key_path:
        if not (server.tls_cert_path and server.tls_key_path):
            raise TlsError(
                "give both a certificate and a key (--cert and --key, or tls_cert_path and tls_key_path)"
            )
        return _user_pair(settings, server.tls_cert_path, server.tls_key_path)
    tls_dir = ensure_private_dir(settings.tls_dir)
    cert_path, key_path = tls_dir / "server.crt", tls_dir / "server.key"
    if cert_path.exists() or key_path.exists():
        if not (cert_path.exists() and key_path.exists()):
            present = cert_path if cert_path.exists() else key_path
            raise TlsError(
                f"found {present} without its partner; restore the missing file, or delete {tls_dir} "
                "to generate a new identity (clients will need the new fingerprint)"
            )
        cert = _load_cert(cert_path)
        _check_pair(cert, _load_key(key_path), cert_path, key_path)
        wanted = set(_san_strings(server.host, server.tls_san))
        missing = sorted(wanted - set(cert_info(cert).san))
        notes = []
        if missing:
            notes.append(
                f"the saved certificate {cert_path} lacks SANs {', '.join(missing)}; delete {tls_dir} to "
                "regenerate it (this changes the fingerprint)"
            )
        notes.extend(_expiry_warnings(cert, cert_path))
        return CertPaths(cert_path, key_path, generated=False, warnings=tuple(notes))
    cert_pem, key_pem = create_self_signed(server.host, server.tls_san, server.tls_validity_days)
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem, mode=0o644)
    return CertPaths(cert_path, key_path, generated=True)


def fetch_peer_cert(host: str, port: int, timeout: float = 10.0) -> bytes:
    """Handshake without verification and return the peer's DER certificate; nothing else is sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls_sock,
    ):
        der = tls_sock.getpeercert(True)
    if not der:
        raise TlsError(f"{host}:{port} presented no certificate")
    return der


def pinned_ssl_context(der: bytes) -> ssl.SSLContext:
    """An SSL context whose only trust anchor is the pinned certificate; other certificates fail the handshake."""
    ctx = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    ctx.check_hostname = False  # the pin, not the name, is the identity
    return ctx


# ---------------------------------------------------------------------------------------------------------------


def _san_strings(host: str, extra: tuple[str, ...]) -> list[str]:
    names = [] if host in _WILDCARD_HOSTS else [host]
    if host in _WILDCARD_HOSTS:
        names.append(socket.gethostname())
    names += ["localhost", "127.0.0.1", "::1", *extra]
    seen: list[str] = []
    for name in names:
        try:
            name = str(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            name = name.lower()
        if name and name not in seen:
            seen.append(name)
    return seen


def _san_entries(host: str, extra: tuple[str, ...]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in _san_strings(host, extra):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise TlsError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsError(f"{path} is not a PEM certificate") from None


def _load_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(f"{path} is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise TlsError(f"{path} is not a PEM private key (PKCS#1, PKCS#8 or EC)") from None


def _check_pair(cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise TlsError(f"the key {key_path} does not belong to the certificate {cert_path}")


def _user_pair(settings: Settings, cert_path: Path, key_path: Path) -> CertPaths:
    cert = _load_cert(cert_path)
    key = _load_key(key_path)
    _check_pair(cert, key, cert_path, key_path)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if pkcs8 != key_path.read_bytes():
        # granian loads PKCS#8 only: serve a private PKCS#8 copy of a PKCS#1 or SEC1 (EC) key.
        converted = ensure_private_dir(settings.tls_dir) / "user-key.pkcs8.pem"
        write_private(converted, pkcs8)
        key_path = converted
    return CertPaths(cert_path, key_path, generated=False, warnings=tuple(_expiry_warnings(cert, cert_path)))


def _expiry_warnings(cert: x509.Certificate, path: Path) -> list[str]:
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return [
            f"the certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; clients will refuse it"
        ]
    if left.days < 30:
        return [f"the certificate {path} expires in {left.days} days"]
    return []
