"""`specai cert pem`: the certificate other tools trust (local, or a server's once its pin is checked) and curl's
public-key pin; never a certificate taken on first use without a person or a fingerprint vouching for it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from live import ServerProcess, Terminal, make_home, run_cli
from typer.testing import CliRunner

from specai.cli import app
from specai.identity.fingerprint import fingerprint_der
from specai.identity.tls import create_self_signed

CERT_PEM, KEY_PEM = create_self_signed("127.0.0.1")


def invoke(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["cert", "pem", *args], env={"SPECAI_HOME": str(home)})
    return result.exit_code, result.stdout, result.stderr


def tls_home(tmp_path: Path, cert: bytes, name: str = "home") -> Path:
    home = make_home(tmp_path, name)
    (home / "tls").mkdir()
    (home / "tls" / "server.crt").write_bytes(cert)
    return home


def openssl_pubkey_pin(pem: str) -> str:
    """curl's documented recipe for a --pinnedpubkey value, run with openssl itself."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=pem.encode(), capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-binary"], input=der, capture_output=True, check=True
    ).stdout
    return "sha256//" + base64.b64encode(digest).decode()


# --- the local certificate --------------------------------------------------------------------------------------


def test_local_pem_is_the_served_certificate(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(tls_home(tmp_path, CERT_PEM))
    assert (code, stderr) == (0, "")
    assert stdout == CERT_PEM.decode()
    ssl.create_default_context(cadata=stdout)  # loads as a trust anchor


def test_local_pem_of_a_chain_is_its_first_certificate(tmp_path: Path) -> None:
    other, _ = create_self_signed("other")
    code, stdout, _ = invoke(tls_home(tmp_path, b"subject=CN=me\n" + CERT_PEM + other))
    assert code == 0
    assert stdout == CERT_PEM.decode()


def test_local_pem_follows_the_configured_certificate(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    elsewhere = tmp_path / "mine.crt"
    elsewhere.write_bytes(CERT_PEM)
    (home / "spec-ai.config.toml").write_text(
        f'[server]\ntls_cert_path = "{elsewhere}"\ntls_key_path = "k"\n'
    )
    code, stdout, _ = invoke(home)
    assert code == 0
    assert stdout == CERT_PEM.decode()


def test_local_pem_without_a_certificate_says_how_one_appears(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(make_home(tmp_path))
    assert code == 1
    assert stdout == ""
    assert "no certificate at" in stderr
    assert "`specai server` creates one" in stderr


def test_local_pem_of_a_file_that_is_no_certificate_is_an_error(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(tls_home(tmp_path, KEY_PEM))
    assert code == 1
    assert stdout == ""
    assert "is not a PEM certificate" in stderr
    assert "Traceback" not in stderr


def test_pubkey_pin_hashes_the_public_key_not_the_certificate(tmp_path: Path) -> None:
    code, stdout, _ = invoke(tls_home(tmp_path, CERT_PEM), "--pubkey-pin")
    assert code == 0
    pin = stdout.strip()
    assert pin.startswith("sha256//")
    assert len(pin) == len("sha256//") + 44  # base64 of 32 bytes
    reissued = reissue(CERT_PEM, KEY_PEM)
    assert fingerprint_der(ssl.PEM_cert_to_DER_cert(reissued.decode())) != fingerprint_der(
        ssl.PEM_cert_to_DER_cert(CERT_PEM.decode())
    )
    assert invoke(tls_home(tmp_path, reissued, "reissued"), "--pubkey-pin")[1].strip() == pin  # same key
    fresh, _ = create_self_signed("127.0.0.1")
    assert invoke(tls_home(tmp_path, fresh, "fresh"), "--pubkey-pin")[1].strip() != pin  # a new key


def reissue(cert_pem: bytes, key_pem: bytes) -> bytes:
    """Another certificate (new serial and dates) for the same key and names."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


@pytest.mark.live
def test_pubkey_pin_matches_openssl(tmp_path: Path) -> None:
    code, stdout, _ = invoke(tls_home(tmp_path, CERT_PEM), "--pubkey-pin")
    assert code == 0
    assert stdout.strip() == openssl_pubkey_pin(CERT_PEM.decode())


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--server", "ftp://127.0.0.1:3000"), "error: --server: specai servers speak HTTPS only"),
        (
            ("--server", "https://127.0.0.1:99999"),
            "error: --server: 'https://127.0.0.1:99999' has an invalid port",
        ),
        (
            ("--server", "https://127.0.0.1:3000", "--fingerprint", "AA:BB"),
            "error: --fingerprint: 'AA:BB' is not a SHA-256 fingerprint",
        ),
    ],
)
def test_a_malformed_server_or_fingerprint_is_a_usage_error_before_connecting(
    tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    code, stdout, stderr = invoke(make_home(tmp_path), *args)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith(problem), stderr


# --- a running server's, checked ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("cert-pem-server")).start()
    yield server
    server.stop()


@pytest.mark.live
def test_remote_pem_without_a_pin_is_refused_with_the_fingerprint(
    served: ServerProcess, client_home: Path
) -> None:
    result = run_cli(client_home, "cert", "pem", "--server", served.url)
    assert result.returncode == 5
    assert result.stdout == ""
    assert f"pass --fingerprint {served.fingerprint}" in result.stderr
    assert not (client_home / "known_servers.json").exists()  # nothing trusted on first use


@pytest.mark.live
def test_remote_pem_with_the_fingerprint_is_the_served_certificate_and_pins_it(
    served: ServerProcess, client_home: Path, tmp_path: Path
) -> None:
    result = run_cli(client_home, "cert", "pem", "--server", served.url, "--fingerprint", served.fingerprint)
    assert result.returncode == 0, result.stderr
    assert ssl.PEM_cert_to_DER_cert(result.stdout) == served.der()
    assert fingerprint_der(served.der()) == served.fingerprint
    assert json.loads((client_home / "known_servers.json").read_text()) == {served.url: served.fingerprint}
    again = run_cli(client_home, "cert", "pem", "--server", served.url)  # the saved pin suffices now
    assert (again.returncode, again.stdout) == (0, result.stdout)
    # what it printed is what ssl.create_default_context(cafile=...) needs, hostname check included
    pem = tmp_path / "specai.pem"
    pem.write_text(result.stdout)
    with httpx.Client(verify=ssl.create_default_context(cafile=pem)) as client:
        assert client.get(f"{served.url}/health").status_code == 200


@pytest.mark.live
@pytest.mark.parametrize("answer", ["y", "n"])
def test_remote_pem_at_a_terminal_asks_before_trusting(
    served: ServerProcess, client_home: Path, answer: str
) -> None:
    with Terminal(client_home, "cert", "pem", "--server", served.url) as term:
        term.expect(served.fingerprint)
        term.expect("Trust this server and remember it?")
        term.type_line(answer)
        code = term.finish()
        shown = term.text()
    if answer == "y":
        assert code == 0, shown
        assert ssl.DER_cert_to_PEM_cert(served.der()).strip().replace("\n", "\r\n") in shown
        assert json.loads((client_home / "known_servers.json").read_text()) == {
            served.url: served.fingerprint
        }
    else:
        assert code == 5, shown
        assert "BEGIN CERTIFICATE" not in shown
        assert not (client_home / "known_servers.json").exists()


@pytest.mark.live
def test_remote_pem_refuses_another_fingerprint(served: ServerProcess, client_home: Path) -> None:
    wrong = ":".join(["AB"] * 32)
    result = run_cli(client_home, "cert", "pem", "--server", served.url, "--fingerprint", wrong)
    assert result.returncode == 5
    assert result.stdout == ""
    assert f"presented fingerprint {served.fingerprint}, not the expected {wrong}" in result.stderr


@pytest.mark.live
def test_remote_pem_refuses_a_changed_certificate(served: ServerProcess, client_home: Path) -> None:
    pinned = ":".join(["CD"] * 32)
    (client_home / "known_servers.json").write_text(json.dumps({served.url: pinned}))
    result = run_cli(client_home, "cert", "pem", "--server", served.url)
    assert result.returncode == 5
    assert result.stdout == ""
    assert "CHANGED" in result.stderr
    assert json.loads((client_home / "known_servers.json").read_text()) == {served.url: pinned}


@pytest.mark.live
def test_remote_pubkey_pin_is_the_served_key_and_curl_accepts_it(
    served: ServerProcess, client_home: Path
) -> None:
    result = run_cli(
        client_home,
        "cert",
        "pem",
        "--server",
        served.url,
        "--fingerprint",
        served.fingerprint,
        "--pubkey-pin",
    )
    assert result.returncode == 0, result.stderr
    pin = result.stdout.strip()
    assert pin == openssl_pubkey_pin(ssl.DER_cert_to_PEM_cert(served.der()))
    ok = subprocess.run(
        ["curl", "-sS", "-k", "--pinnedpubkey", pin, f"{served.url}/health"], capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        ["curl", "-sS", "-k", "--pinnedpubkey", "sha256//" + "A" * 43 + "=", f"{served.url}/health"],
        capture_output=True,
        timeout=30,
    )
    assert wrong.returncode == 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH


@pytest.mark.live
def test_remote_pem_of_a_server_that_is_not_there_is_an_error(client_home: Path) -> None:
    from live import free_port

    result = run_cli(client_home, "cert", "pem", "--server", f"https://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
