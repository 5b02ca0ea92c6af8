"""Server identity: self-signed certs, reuse across starts, user-supplied pairs, fingerprints, pinned handshakes."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from live import loopback_server

from specai.config import ServerSettings, Settings
from specai.errors import TlsError
from specai.identity.fingerprint import fingerprint_der, normalize_fingerprint
from specai.identity.tls import (
    create_self_signed,
    ensure_server_cert,
    fetch_peer_cert,
    pinned_ssl_context,
    read_cert,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def write_pair(folder: Path, name: str, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a fresh self-signed cert/key pair as `<name>.crt` and `<name>.key`."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = create_self_signed(host)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def user_pair(
    folder: Path, key: object, key_format: serialization.PrivateFormat, days: int = 90
) -> tuple[Path, Path]:
    """A minimal self-signed cert for `key`, with the key written in `key_format`."""
    folder.mkdir(parents=True, exist_ok=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = folder / "user.crt", folder / "user.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, key_format, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def user_settings(home: Path, cert: Path | None, key: Path | None) -> Settings:
    return Settings(home=home, server=ServerSettings(tls_cert_path=cert, tls_key_path=key))


# --- create_self_signed ---------------------------------------------------------------------------------------


def test_self_signed_cert_has_ip_and_dns_sans() -> None:
    cert_pem, key_pem = create_self_signed("127.0.0.1", ("box.lan", "10.0.0.7", "[fe80::1]"))
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = san_of(cert)
    ips = san.get_values_for_type(x509.IPAddress)
    dns = san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert ipaddress.ip_address("10.0.0.7") in ips
    assert ipaddress.ip_address("fe80::1") in ips
    assert "localhost" in dns
    assert "box.lan" in dns
    # IP addresses never appear as DNS names.
    assert "127.0.0.1" not in dns
    assert "::1" not in dns
    assert "10.0.0.7" not in dns
    assert len(ips) + len(dns) == len(set(ips)) + len(set(dns))  # no duplicates
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_self_signed_cert_names_host_in_cn_and_sans() -> None:
    cert_pem, _ = create_self_signed("MyBox.example")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "spec-ai-server-MyBox.example"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "spec-ai"
    assert cert.issuer == cert.subject
    assert "mybox.example" in san_of(cert).get_values_for_type(x509.DNSName)


def test_self_signed_cert_validity_follows_days() -> None:
    cert_pem, _ = create_self_signed("127.0.0.1", validity_days=10)
    cert = x509.load_pem_x509_certificate(cert_pem)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=9, hours=23) < lifetime <= dt.timedelta(days=10)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_self_signed_cert_is_its_own_trust_anchor_for_strict_verifiers() -> None:
    """BoringSSL (Bun, so Claude Code's MCP client) trusts a self-signed leaf only if its key usage allows
    certificate signing: without it, `NODE_EXTRA_CA_CERTS=specai.pem` ends in UNABLE_TO_VERIFY_LEAF_SIGNATURE."""
    cert = x509.load_pem_x509_certificate(create_self_signed("127.0.0.1")[0])
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_cert_sign
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False  # still no CA: it cannot vouch for any other certificate


def test_self_signed_key_matches_cert() -> None:
    cert_pem, key_pem = create_self_signed("127.0.0.1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


# --- ensure_server_cert ---------------------------------------------------------------------------------------


def test_ensure_server_cert_generates_once_then_reuses(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", server=ServerSettings(tls_san=("box.lan",)))
    first = ensure_server_cert(settings)
    assert first.generated is True
    assert first.cert == settings.tls_dir / "server.crt"
    assert first.key == settings.tls_dir / "server.key"
    assert mode(first.key) == 0o600
    assert mode(settings.tls_dir) == 0o700
    info = read_cert(first.cert)
    assert info.subject == "CN=spec-ai-server-127.0.0.1, O=spec-ai"
    assert {"127.0.0.1", "::1", "localhost", "box.lan"} <= set(info.san)

    second = ensure_server_cert(settings)
    assert second.generated is False
    assert second.warnings == ()
    assert (second.cert, second.key) == (first.cert, first.key)
    assert read_cert(second.cert).fingerprint == info.fingerprint
    assert mode(second.key) == 0o600


def test_ensure_server_cert_warns_when_saved_cert_lacks_new_san(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = ensure_server_cert(Settings(home=home))
    fingerprint = read_cert(first.cert).fingerprint
    again = ensure_server_cert(Settings(home=home, server=ServerSettings(tls_san=("new.example",))))
    assert again.generated is False
    assert read_cert(again.cert).fingerprint == fingerprint
    assert len(again.warnings) == 1
    assert "new.example" in again.warnings[0]
    assert str(again.cert) in again.warnings[0]


@pytest.mark.parametrize("missing", ["server.key", "server.crt"])
def test_ensure_server_cert_refuses_a_file_without_its_partner(tmp_path: Path, missing: str) -> None:
    settings = Settings(home=tmp_path / "home")
    ensure_server_cert(settings)
    (settings.tls_dir / missing).unlink()
    with pytest.raises(TlsError) as info:
        ensure_server_cert(settings)
    assert "without its partner" in info.value.message
    assert str(settings.tls_dir) in info.value.message
    assert info.value.code == "tls_error"
    assert not (settings.tls_dir / missing).exists()  # never silently regenerated


def test_ensure_server_cert_refuses_saved_pair_that_does_not_match(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    ensure_server_cert(settings)
    _, other_key = write_pair(tmp_path / "other", "other")
    (settings.tls_dir / "server.key").write_bytes(other_key.read_bytes())
    with pytest.raises(TlsError, match="does not belong to the certificate"):
        ensure_server_cert(settings)


def test_user_cert_and_key_mismatch_is_an_error(tmp_path: Path) -> None:
    cert_a, _ = write_pair(tmp_path / "a", "a")
    _, key_b = write_pair(tmp_path / "b", "b")
    with pytest.raises(TlsError) as info:
        ensure_server_cert(user_settings(tmp_path / "home", cert_a, key_b))
    assert info.value.message == f"the key {key_b} does not belong to the certificate {cert_a}"


def test_user_cert_without_key_is_an_error(tmp_path: Path) -> None:
    cert_a, _ = write_pair(tmp_path / "a", "a")
    with pytest.raises(TlsError, match="give both a certificate and a key"):
        ensure_server_cert(user_settings(tmp_path / "home", cert_a, None))


def test_user_cert_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    _, key_a = write_pair(tmp_path / "a", "a")
    missing = tmp_path / "missing.crt"
    with pytest.raises(TlsError) as info:
        ensure_server_cert(user_settings(tmp_path / "home", missing, key_a))
    assert info.value.message == f"certificate file {missing} does not exist"


def test_user_files_that_are_not_pem_are_errors(tmp_path: Path) -> None:
    cert_a, key_a = write_pair(tmp_path / "a", "a")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem file\n")
    with pytest.raises(TlsError, match="is not a PEM certificate"):
        ensure_server_cert(user_settings(tmp_path / "home", junk, key_a))
    with pytest.raises(TlsError, match="is not a PEM private key"):
        ensure_server_cert(user_settings(tmp_path / "home", cert_a, junk))


def test_user_pkcs8_key_is_used_as_is(tmp_path: Path) -> None:
    cert_a, key_a = write_pair(tmp_path / "a", "a")
    paths = ensure_server_cert(user_settings(tmp_path / "home", cert_a, key_a))
    assert (paths.cert, paths.key, paths.generated) == (cert_a, key_a, False)
    assert not (tmp_path / "home" / "tls" / "server.crt").exists()


@pytest.mark.parametrize(
    ("make_key", "header"),
    [
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            b"-----BEGIN RSA PRIVATE KEY-----",
        ),
        (lambda: ec.generate_private_key(ec.SECP256R1()), b"-----BEGIN EC PRIVATE KEY-----"),
    ],
    ids=["pkcs1-rsa", "sec1-ec"],
)
def test_user_traditional_key_is_converted_to_private_pkcs8_copy(
    tmp_path: Path, make_key, header: bytes
) -> None:
    key = make_key()
    cert_path, key_path = user_pair(tmp_path / "user", key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert key_path.read_bytes().startswith(header)
    original = key_path.read_bytes()
    settings = user_settings(tmp_path / "home", cert_path, key_path)

    paths = ensure_server_cert(settings)

    assert paths.cert == cert_path
    assert paths.key != key_path
    assert paths.key.parent == settings.tls_dir
    assert mode(paths.key) == 0o600
    converted = paths.key.read_bytes()
    assert converted.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(converted, password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert loaded.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    assert key_path.read_bytes() == original  # the user's file is never touched
    # And the converted pair really loads as a server identity.
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(paths.cert, paths.key)


def test_user_pkcs8_rsa_key_is_accepted(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_path, key_path = user_pair(tmp_path / "user", key, serialization.PrivateFormat.PKCS8)
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    paths = ensure_server_cert(user_settings(tmp_path / "home", cert_path, key_path))
    assert paths.key == key_path


def test_user_cert_close_to_expiry_is_served_with_a_warning(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = user_pair(tmp_path / "user", key, serialization.PrivateFormat.PKCS8, days=10)
    paths = ensure_server_cert(user_settings(tmp_path / "home", cert_path, key_path))
    assert paths.warnings == (f"the certificate {cert_path} expires in 9 days",)


# --- fingerprints ---------------------------------------------------------------------------------------------


@pytest.mark.live  # runs openssl
def test_fingerprint_matches_openssl(tmp_path: Path) -> None:
    paths = ensure_server_cert(Settings(home=tmp_path / "home"))
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(paths.cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    label, _, openssl_fingerprint = out.partition("=")
    assert label.lower() == "sha256 fingerprint"
    info = read_cert(paths.cert)
    assert info.fingerprint == openssl_fingerprint.upper()
    assert len(info.fingerprint) == 32 * 3 - 1
    der = x509.load_pem_x509_certificate(paths.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert fingerprint_der(der) == info.fingerprint


def test_cert_info_as_dict_has_the_cert_endpoint_shape(tmp_path: Path) -> None:
    paths = ensure_server_cert(Settings(home=tmp_path / "home"))
    body = read_cert(paths.cert).as_dict()
    assert set(body) == {"fingerprint", "certificate_pem", "not_before", "not_after", "subject", "san"}
    assert body["certificate_pem"] == paths.cert.read_text()
    assert dt.datetime.fromisoformat(str(body["not_after"])) > dt.datetime.fromisoformat(
        str(body["not_before"])
    )
    assert isinstance(body["san"], list)


def test_normalize_fingerprint_accepts_common_spellings() -> None:
    canonical = ":".join(f"{b:02X}" for b in range(32))
    plain = "".join(f"{b:02x}" for b in range(32))
    assert normalize_fingerprint(canonical) == canonical
    assert normalize_fingerprint(canonical.lower()) == canonical
    assert normalize_fingerprint(plain) == canonical
    assert normalize_fingerprint(plain.upper()) == canonical
    assert normalize_fingerprint(f"  sha256:{plain}  ") == canonical
    assert normalize_fingerprint(f"SHA256 Fingerprint={canonical}") == canonical


@pytest.mark.parametrize("garbage", ["", "hello", "zz" * 32, "AB:CD", "ab" * 33, "AB:CD:EF:" * 11])
def test_normalize_fingerprint_rejects_garbage(garbage: str) -> None:
    with pytest.raises(TlsError) as info:
        normalize_fingerprint(garbage)
    assert "is not a SHA-256 fingerprint" in info.value.message
    assert "64 hex digits" in info.value.message


# --- peer certificates and pinning over real loopback TLS ------------------------------------------------------


def tls_server(cert: Path, key: Path) -> contextlib.AbstractContextManager[int]:
    """A tiny TLS server on 127.0.0.1:<port> that handshakes each connection, then closes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        with ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.recv(1)

    return loopback_server(handle)


def test_fetch_peer_cert_returns_the_served_certificate(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "srv", "srv")
    with tls_server(cert, key) as port:
        der = fetch_peer_cert("127.0.0.1", port, timeout=5)
    assert fingerprint_der(der) == read_cert(cert).fingerprint


def test_fetch_peer_cert_connection_refused_raises_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        fetch_peer_cert("127.0.0.1", port, timeout=2)


def test_pinned_context_accepts_the_pinned_cert_and_refuses_another(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "srv", "srv")
    other_cert, _ = write_pair(tmp_path / "other", "other")
    pinned_der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    other_der = x509.load_pem_x509_certificate(other_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )

    with tls_server(cert, key) as port:
        good = pinned_ssl_context(pinned_der)
        assert good.verify_mode == ssl.CERT_REQUIRED
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            good.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock,
        ):
            assert tls_sock.getpeercert(True) == pinned_der

        bad = pinned_ssl_context(other_der)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            bad.wrap_socket(sock, server_hostname="127.0.0.1")


def test_pinned_context_works_for_any_hostname(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "srv", "srv")
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    with (
        tls_server(cert, key) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        pinned_ssl_context(der).wrap_socket(sock, server_hostname="not-in-the-sans.example") as tls_sock,
    ):
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
