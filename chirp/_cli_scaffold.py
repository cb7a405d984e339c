"""The `chirp init`, `chirp new` and `chirp map` commands.

Registered on the `chirp` application when `chirp._cli` imports this module; the work
lives in `chirp._scaffold` and `chirp._map`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import redis
import typer

from chirp._cli import app
from chirp._config import NAMESPACE_VARIABLE, REDIS_URL_VARIABLE
from chirp._errors import ChirpError, UsageError
from chirp._map import (
    Choreography,
    Edge,
    Node,
    Traffic,
    read_traffic,
    to_mermaid,
    to_svg,
)
from chirp._map import load as load_map
from chirp._scaffold import (
    Scaffold,
    init_project,
    new_message,
    new_operation,
    new_worker,
)

new = typer.Typer(
    name="new",
    no_args_is_help=True,
    help="Add a message, an operation or a worker to a project made by `chirp init`.",
)
app.add_typer(new)

_Package = Annotated[str, typer.Argument(help="The project's Python package.")]
_Name = Annotated[str, typer.Argument(help="Kebab-case name, e.g. order-place.")]
_Root = Annotated[
    Path,
    typer.Option(help="The project directory.", exists=True, file_okay=False),
]


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The new project's directory.")],
    package: Annotated[
        str | None, typer.Option(help="Python package; from DIRECTORY by default.")
    ] = None,
) -> None:
    """Start a project: pyproject.toml, src/PACKAGE/, tests/ and a README."""
    _report(lambda: init_project(directory, package=package))


@new.command("message")
def new_message_command(
    package: _Package,
    name: _Name,
    param: Annotated[
        list[str] | None,
        typer.Option(help="A routing parameter, a string field (repeatable)."),
    ] = None,
    root: _Root = Path("."),
) -> None:
    """Add a message: src/PACKAGE/proto/NAME.proto and a test."""
    _report(lambda: new_message(root, package, name, parameters=param))


@new.command("operation")
def new_operation_command(
    package: _Package, name: _Name, root: _Root = Path(".")
) -> None:
    """Add an operation: its request and response, module, test and registration."""
    _report(lambda: new_operation(root, package, name))


@new.command("worker")
def new_worker_command(
    package: _Package,
    name: _Name,
    consumes: Annotated[
        str | None, typer.Option(help="The message it consumes; NAME by default.")
    ] = None,
    root: _Root = Path("."),
) -> None:
    """Add a worker: its module, test and registration, and its completion message."""
    _report(lambda: new_worker(root, package, name, consumes=consumes))


def _report(job: Callable[[], Scaffold]) -> None:
    try:
        done = job()
    except ChirpError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc

    for path in done.created:
        typer.echo(f"Created: {path}")
    for path in done.updated:
        typer.echo(f"Updated: {path}")
    typer.echo("Next: " + " && ".join(done.next_steps))


_SVG, _MERMAID = ".svg", (".md", ".mmd")


@app.command("map")
def map_command(
    module: Annotated[
        list[str],
        typer.Option(help="A module whose workers and operations to map (repeatable)."),
    ],
    path: Annotated[
        list[Path] | None,
        typer.Option(
            help="Directory to import modules from (repeatable).", exists=True
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Highlight what follows this message."),
    ] = None,
    mermaid: Annotated[
        bool, typer.Option("--mermaid", help="Mermaid flowchart instead of SVG.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Write to FILE.svg, or FILE.md / FILE.mmd for Mermaid."),
    ] = None,
    live: Annotated[
        bool, typer.Option(help="Label consumer edges with traffic read from Redis.")
    ] = False,
    redis_url: Annotated[
        str | None, typer.Option(envvar=REDIS_URL_VARIABLE, help="Redis server URL.")
    ] = None,
    namespace: Annotated[
        str, typer.Option(envvar=NAMESPACE_VARIABLE, help="The system's namespace.")
    ] = "",
) -> None:
    """Draw which workers consume which messages and what they publish and call."""
    try:
        graph, highlight, traffic = _map_parts(
            module, path, from_, live, redis_url, namespace
        )
        as_mermaid = mermaid or (out is not None and out.suffix in _MERMAID)
        if out is not None and not as_mermaid and out.suffix != _SVG:
            raise UsageError(f"cannot draw {out}: write .svg, or .md/.mmd for Mermaid")
        if out is not None and as_mermaid and out.suffix not in _MERMAID:
            raise UsageError(f"Mermaid text goes to a .md or .mmd file, not {out}")
    except (ChirpError, redis.RedisError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc

    render = to_mermaid if as_mermaid else to_svg
    text = render(graph, highlight=highlight, traffic=traffic)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.suffix == ".md":
        text = f"```mermaid\n{text}```\n"
    out.write_text(text)
    typer.echo(f"Wrote {out}: {len(graph.nodes)} nodes, {len(graph.edges)} edges.")


def _map_parts(
    modules: list[str],
    paths: list[Path] | None,
    start: str | None,
    live: bool,
    redis_url: str | None,
    namespace: str,
) -> tuple[Choreography, set[Node | Edge], dict[Edge, Traffic]]:
    for directory in reversed([Path.cwd(), *(paths or [])]):
        text = str(directory.resolve())
        if text not in sys.path:
            sys.path.insert(0, text)
    graph = load_map(modules)
    highlight = graph.following(start) if start else set()
    if not live:
        return graph, highlight, {}
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        raise UsageError(
            f"--live needs a Redis URL: set {REDIS_URL_VARIABLE} or pass --redis-url"
        )
    client = redis.Redis.from_url(url)
    try:
        return graph, highlight, read_traffic(graph, client, namespace=namespace)
    finally:
        client.close()
