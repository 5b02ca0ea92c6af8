"""`specai cert ...`: show the server identity, from the local certificate or a running server."""

from __future__ import annotations

import base64
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

RemoteOption = Annotated[
    Optional[str],
    typer.Option(
        "--server", "-s", help="Read the certificate a running server presents instead of the local file."
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
