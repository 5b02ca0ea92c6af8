"""`specai cert ...`: show the server identity, from the local certificate or a running server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from specai.cli import _settings
from specai.cli._console import handle_errors, out, print_json
from specai.errors import ConnectionFailedError, TlsError
from specai.identity.trust import parse_server

if TYPE_CHECKING:
    from specai.identity.tls import CertInfo

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

    if server:
        address = parse_server(server)
        try:
            return cert_info_from_der(fetch_peer_cert(address.host, address.port))
        except OSError as exc:
            raise ConnectionFailedError(f"cannot reach {address.origin}: {exc.strerror or exc}") from None
    settings = _settings.load(ctx)
    path = settings.server.tls_cert_path or settings.tls_dir / "server.crt"
    if not path.exists():
        raise TlsError(f"no certificate at {path} yet; `specai server` creates one on first start")
    return read_cert(path)


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
    print(_info(ctx, server).fingerprint)
