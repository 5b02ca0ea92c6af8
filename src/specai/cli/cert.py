"""`specai cert ...`: show the server identity, from the local certificate or a running server, and hand it to
other tools (`cert pem`: the certificate to trust, or curl's public-key pin)."""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from specai.cli import _settings
from specai.cli._console import handle_errors, out, print_json
from specai.errors import ConnectionFailedError, TlsError

if TYPE_CHECKING:
    from specai.identity.tls import CertInfo

PEM_BEGIN, PEM_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"

app = typer.Typer(help="Show the server's TLS identity.", no_args_is_help=True)


def _check_server(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """A malformed `--server` is a usage error as everywhere (the shared check loads only when one is given)."""
    if value is None:
        return None
    from specai.cli._client import check_server_url

    return check_server_url(ctx, param, value)


def _check_fingerprint(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """A malformed `--fingerprint` (or SPECAI_FINGERPRINT) is a usage error as everywhere."""
    if value is None:
        return None
    from specai.cli._client import check_fingerprint

    return check_fingerprint(ctx, param, value)


RemoteOption = Annotated[
    Optional[str],
    typer.Option(
        "--server",
        "-s",
        help="Read the certificate a running server presents instead of the local file.",
        callback=_check_server,
    ),
]


def _info(ctx: typer.Context, server: str | None) -> CertInfo:
    from specai.identity.tls import (  # cryptography loads only here
        cert_info_from_der,
        fetch_peer_cert,
        read_cert,
    )
    from specai.identity.trust import parse_server

    if server:
        address = parse_server(server)
        try:
            return cert_info_from_der(fetch_peer_cert(address.host, address.port))
        except OSError as exc:
            raise ConnectionFailedError(f"cannot reach {address.origin}: {exc.strerror or exc}") from None
    return read_cert(_local_cert(ctx))


def _local_cert(ctx: typer.Context) -> Path:
    """The certificate `specai server` serves with this configuration."""
    settings = _settings.load(ctx)
    path = settings.server.tls_cert_path or settings.tls_dir / "server.crt"
    if not path.exists():
        raise TlsError(f"no certificate at {path} yet; `specai server` creates one on first start")
    return path


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    server: RemoteOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON (the /cert shape).")] = False,
) -> None:
    """Show subject, SANs, validity and fingerprint.

    Examples:

      specai cert show

      specai cert show --server https://10.0.0.5:3000 --json
    """
    info = _info(ctx, server)
    if json_output:
        print_json(info.as_dict())
        return
    out.print(f"subject      {info.subject}")
    out.print(f"SANs         {', '.join(info.san)}")
    out.print(f"valid from   {info.not_before.isoformat()}")
    out.print(f"valid until  {info.not_after.isoformat()}")
    out.print(f"fingerprint  {info.fingerprint}  (SHA-256 of the DER certificate)")


@app.command("fingerprint")
@handle_errors
def fingerprint(ctx: typer.Context, server: RemoteOption = None) -> None:
    """Print only the SHA-256 fingerprint (AA:BB:...:FF).

    Examples:

      specai cert fingerprint

      specai cert fingerprint --server https://10.0.0.5:3000
    """
    if server:
        print(_info(ctx, server).fingerprint)
        return
    path = _local_cert(ctx)
    if (quick := _pem_fingerprint(path)) is not None:
        print(quick)
        return
    from specai.identity.tls import read_cert  # cryptography: anything the quick reading is unsure of

    print(read_cert(path).fingerprint)


@app.command("pem")
@handle_errors
def pem(
    ctx: typer.Context,
    server: Annotated[
        Optional[str],
        typer.Option(
            "--server",
            "-s",
            help="Fetch the certificate a running server presents, checked against its pin or --fingerprint.",
            callback=_check_server,
        ),
    ] = None,
    fingerprint: Annotated[
        Optional[str],
        typer.Option(
            "--fingerprint",
            envvar="SPECAI_FINGERPRINT",
            help="With --server: the SHA-256 fingerprint the certificate must have (pins it).",
            callback=_check_fingerprint,
        ),
    ] = None,
    pubkey_pin: Annotated[
        bool,
        typer.Option(
            "--pubkey-pin",
            help="Print curl's --pinnedpubkey value (sha256//BASE64 of the public key) instead.",
        ),
    ] = False,
) -> None:
    """Print the certificate other tools should trust, as PEM.

    It is what curl --cacert, SSL_CERT_FILE and ssl.create_default_context(cafile=...) take; the README's "Use it
    from other tools" has tested recipes for the openai SDK, llm, litellm and curl.

    Without --server it prints the local server's certificate (run it on the server machine). With --server the
    certificate is checked first, as `specai login` checks it: against --fingerprint, else the pin saved in
    known_servers.json; an unknown server is refused (exit 5, with the fingerprint to check and pass) unless you
    confirm it at a terminal.

    Examples:

      specai cert pem > specai.pem

      specai cert pem --server https://10.0.0.5:3000 --fingerprint AA:BB:...:FF > specai.pem

      curl -k --pinnedpubkey "$(specai cert pem --pubkey-pin)" https://127.0.0.1:3000/health
    """
    import ssl  # not at the top: `cert fingerprint` starts without it

    der = _trusted_der(server, fingerprint) if server else _local_der(ctx)
    if pubkey_pin:
        print(_pubkey_pin(der))
        return
    sys.stdout.write(ssl.DER_cert_to_PEM_cert(der))


def _local_der(ctx: typer.Context) -> bytes:
    import ssl

    from specai.identity.tls import read_cert  # cryptography: the first certificate of any PEM file

    return ssl.PEM_cert_to_DER_cert(read_cert(_local_cert(ctx)).pem)


def _trusted_der(server: str, fingerprint: str | None) -> bytes:
    """The server's certificate once it is trusted exactly as the other commands trust it (never silently on
    first use: at a terminal the person decides, elsewhere TrustError, exit 5, names the fingerprint)."""
    from specai.cli._client import _confirm
    from specai.client.pinning import check_pin, fetch_cert
    from specai.config import home_dir
    from specai.identity.trust import KnownServers, parse_server

    address = parse_server(server)
    der = fetch_cert(address, timeout=10.0)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    check_pin(
        address,
        der,
        KnownServers(home_dir()),
        expected=fingerprint,
        confirm=_confirm if interactive else None,
    )
    return der


def _pubkey_pin(der: bytes) -> str:
    """curl's `--pinnedpubkey` form: `sha256//` and the base64 SHA-256 of the DER SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _pem_fingerprint(path: Path) -> str | None:
    """The fingerprint of a PEM file's first certificate without loading cryptography, when the file is plainly
    one (its first PEM block a CERTIFICATE whose DER has a certificate's shape); else None."""
    from specai.identity.fingerprint import fingerprint_der

    try:
        data = path.read_bytes()
    except OSError:
        return None
    begin = data.find(b"-----BEGIN ")
    end = data.find(PEM_END, begin)
    if begin < 0 or not data.startswith(PEM_BEGIN, begin) or end < 0:
        return None
    try:
        der = base64.b64decode(b"".join(data[begin + len(PEM_BEGIN) : end].split()), validate=True)
    except ValueError:
        return None
    return fingerprint_der(der) if _certificate_shaped(der) else None


def _certificate_shaped(der: bytes) -> bool:
    """`SEQUENCE { SEQUENCE (tbsCertificate), SEQUENCE (signatureAlgorithm), BIT STRING }`, nothing after."""
    outer = _element(der, 0, 0x30)
    if outer is None or outer[1] != len(der):
        return False
    at = outer[0]
    for tag in (0x30, 0x30, 0x03):
        inner = _element(der, at, tag)
        if inner is None:
            return False
        at = inner[1]
    return at == len(der)


def _element(der: bytes, at: int, tag: int) -> tuple[int, int] | None:
    """Where the content of the DER element with `tag` at offset `at` starts and ends."""
    if at + 2 > len(der) or der[at] != tag:
        return None
    size = der[at + 1]
    start = at + 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            return None
        size, start = int.from_bytes(der[start : start + count], "big"), start + count
    return (start, start + size) if start + size <= len(der) else None
