"""`specai graph ...`: a server's knowledge graph from the terminal — list, add, remove, bootstrap, watch live."""

from __future__ import annotations

import typer

from specai.cli.graph import listing, sharing, watch, writing

app = typer.Typer(
    help="The knowledge graph on a server: nodes, edges, bootstrap, sharing, and a live feed of changes.",
    no_args_is_help=True,
)

app.command("nodes")(listing.nodes)
app.command("edges")(listing.edges)
app.command("add-node")(writing.add_node)
app.command("add-edge")(writing.add_edge)
app.command("rm")(writing.remove)
app.command("show")(listing.show)
app.command("bootstrap")(writing.bootstrap)
app.command("sessions")(sharing.sessions)
app.command("share")(sharing.share)
app.command("unshare")(sharing.unshare)
app.command("watch")(watch.watch)
