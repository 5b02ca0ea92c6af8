"""`specai a2a`: talk to any A2A agent (a specai server or another one) over a pinned TLS connection."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from specai.cli._client import FingerprintOption, _confirm, check_server_url
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json
from specai.cli._render import StreamRenderer
from specai.config import DEFAULT_SERVER_URL, home_dir
from specai.identity.trust import KnownServers, SavedTokens

if TYPE_CHECKING:
    from specai.client.a2a import A2AAgent, AgentCardInfo

app = typer.Typer(
    name="a2a",
    help="Talk to any A2A agent (Agent2Agent protocol): print its card, send it a message; pinned TLS.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

AgentUrl = Annotated[
    str,
    typer.Argument(
        help="The agent's https URL (its card is at URL/.well-known/agent-card.json).",
        callback=check_server_url,
        show_default=False,
    ),
]
StreamOption = Annotated[
    bool,
    typer.Option("--stream/--no-stream", help="Show the answer as it is produced (SendStreamingMessage)."),
]


def token_for(origin: str) -> str | None:
    """SPECAI_TOKEN, else the token `specai login` saved for that origin, else none (a public agent)."""
    entry = SavedTokens(home_dir()).get(origin)
    saved = entry.get("token") if isinstance(entry, dict) else None
    return os.environ.get("SPECAI_TOKEN") or (saved if isinstance(saved, str) and saved else None)


@app.command("card")
@handle_errors
def card(
    server: Annotated[
        str,
        typer.Option(
            "--server",
            "-s",
            envvar="SPECAI_SERVER",
            help="The agent's https URL (a specai server, or any A2A agent).",
            show_default=True,
            callback=check_server_url,
        ),
    ] = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the card as the agent served it.")
    ] = False,
) -> None:
    """Print an A2A agent's card: name, skills, interfaces, streaming, security, pinned fingerprint.

    The certificate is checked against the pin before the card is fetched (nothing else is sent).

    Examples:

      specai a2a card --server https://127.0.0.1:3000

      specai a2a card --server https://agent.example:8443 --fingerprint AA:BB:... --json
    """
    from specai.client.a2a import fetch_card

    confirm = _confirm if sys.stdin.isatty() and sys.stderr.isatty() else None
    info = asyncio.run(fetch_card(server, KnownServers(home_dir()), fingerprint=fingerprint, confirm=confirm))
    if json_output:
        print_json(info.raw)
        return
    _show_card(info)


def _show_card(info: AgentCardInfo) -> None:
    line = out.print
    line(
        f"[bold]{escape(info.name or '(no name)')}[/]" + (f" {escape(info.version)}" if info.version else "")
    )
    if info.description:
        line(escape(info.description), markup=False)
    line(f"card: {info.card_url}", markup=False)
    line(f"certificate: {info.fingerprint} (pinned)", markup=False)
    if info.tls_fingerprint is not None:
        same = info.tls_fingerprint == info.fingerprint
        verdict = (
            "matches the pinned certificate" if same else "DIFFERS from the certificate the card came over"
        )
        line(f"card's TLS fingerprint: {info.tls_fingerprint} ({verdict})", markup=False)
    elif info.tls_fingerprint_problem:
        line(f"card's TLS fingerprint: {info.tls_fingerprint_problem}", markup=False)
    line(f"streaming: {'yes' if info.streaming else 'no'}", markup=False)
    line("interfaces:" if info.interfaces else "interfaces: none", markup=False)
    for interface in info.interfaces:
        version = f" {interface.version}" if interface.version else ""
        line(f"  {interface.binding}{version}  {interface.url}", markup=False)
    line("security:" if info.security else "security: none (a public agent)", markup=False)
    for scheme in info.security:
        line(f"  {scheme}", markup=False)
    line("skills:" if info.skills else "skills: none", markup=False)
    for skill in info.skills:
        about = f": {skill['description']}" if skill["description"] else ""
        line(f"  {skill['id']} ({skill['name']}){about}", markup=False)


@app.command("send")
@handle_errors
def send(
    url: AgentUrl,
    message: Annotated[str, typer.Argument(help="What to say to the agent; - reads it from stdin.")],
    stream: StreamOption = True,
    context: Annotated[
        Optional[str],
        typer.Option("--context", help="An A2A context id to continue (from an earlier answer)."),
    ] = None,
    agent: Annotated[
        Optional[str],
        typer.Option(
            "--agent", "-a", help="The skill (a specai server's agent) to ask: message metadata {agent: ID}."
        ),
    ] = None,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the agent's result as JSON (implies --no-stream).")
    ] = False,
) -> None:
    """Send a message to any A2A agent; the answer streams to the terminal as it is produced.

    The agent's certificate is pinned (known_servers.json, --fingerprint or SPECAI_FINGERPRINT, or a prompt on
    first use) before its card is fetched, and the card's JSON-RPC endpoint is pinned before the token is sent:
    SPECAI_TOKEN, else the one `specai login` saved for the endpoint, else none.

    Examples:

      specai a2a send https://127.0.0.1:3000 "hello"

      specai a2a send https://agent.example:8443 "summarise this" --no-stream --json

      specai a2a send https://127.0.0.1:3000 "a haiku" --agent poet
    """
    run_send(
        url,
        message,
        stream=stream,
        context=context,
        agent=agent,
        fingerprint=fingerprint,
        json_output=json_output,
    )


def query_a2a(
    url: str,
    message: str,
    given: list[str],
    *,
    agent: str | None,
    stream: bool,
    fingerprint: str | None,
    json_output: bool,
) -> None:
    """`specai query --a2a URL`: like `a2a send` (`--agent` names the skill); the options that only a specai
    server's own API understands are refused."""
    if given:
        fail(f"{', '.join(given)} cannot be used with --a2a (use them with --server)", USAGE)
    run_send(url, message, stream=stream, agent=agent, fingerprint=fingerprint, json_output=json_output)


def run_send(
    url: str,
    message: str,
    *,
    stream: bool,
    context: str | None = None,
    agent: str | None = None,
    fingerprint: str | None,
    json_output: bool,
) -> None:
    """Send `message` to the agent at `url` and show the answer (shared by `a2a send` and `query --a2a`)."""
    if message == "-":
        from specai.cli.remote import _stdin_message

        message = _stdin_message()
    asyncio.run(_send(url, message, stream and not json_output, context, agent, fingerprint, json_output))


async def _send(
    url: str,
    message: str,
    stream: bool,
    context: str | None,
    agent_id: str | None,
    fingerprint: str | None,
    json_output: bool,
) -> None:
    from specai.client.a2a import A2AAgent, Reply

    confirm = _confirm if sys.stdin.isatty() and sys.stderr.isatty() else None
    agent: A2AAgent = await A2AAgent.connect(
        url,
        KnownServers(home_dir()),
        fingerprint=fingerprint,
        confirm=confirm,
        token_for=token_for,
        streaming=stream,
    )
    async with agent:
        reply = Reply()
        renderer = None if json_output else StreamRenderer()
        try:
            async for event in agent.events(message, context_id=context, agent=agent_id, into=reply):
                if renderer is None:
                    continue
                if event.text:
                    renderer.chunk(event.text)
                if event.note and not event.final:
                    err.print(escape(event.note), style="dim")
        finally:
            if renderer is not None:
                renderer.close()
    if json_output:
        print_json(reply.raw[-1] if len(reply.raw) == 1 else reply.raw)
        return
    if reply.state in {"failed", "rejected", "canceled"}:
        why = f": {reply.error}" if reply.error else ""
        fail(f"the agent's task {reply.task_id} ended {reply.state}{why}")
    if reply.state in {"input required", "auth required"}:
        err.print(
            f"the agent needs {reply.state.removesuffix(' required')} (task {reply.task_id})", style="dim"
        )
    if reply.context_id:
        err.print(f"context {reply.context_id} (continue with --context {reply.context_id})", style="dim")
