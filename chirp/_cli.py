"""The `chirp` command line.

Each command is one function registered on `app`; its work lives in a library module,
and the function only parses options, calls it and reports. Logging is configured here
and nowhere else: the library only creates loggers.
"""

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from chirp._codegen import CodegenError, generate
from chirp._config import NAMESPACE_VARIABLE, NATS_URL_VARIABLE, REDIS_URL_VARIABLE
from chirp._embedded import embedded_servers
from chirp._errors import ChirpError
from chirp._host import DEFAULT_GRACE, load_workers, run_host
from chirp._worker import Worker

app = typer.Typer(
    name="chirp",
    no_args_is_help=True,
    add_completion=False,
)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug details.")
    ] = False,
) -> None:
    """Operations, messages and workers for services on NATS and Redis Streams."""
    _configure_logging(logging.DEBUG if verbose else logging.INFO)


def _configure_logging(level: int) -> None:
    handler = RichHandler(console=_err, show_path=False, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])


@app.command()
def gen(
    root: Annotated[
        Path,
        typer.Argument(
            help="Include root: every .proto file below it is compiled.",
            exists=True,
            file_okay=False,
        ),
    ] = Path("."),
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where generated files go; ROOT by default.", file_okay=False
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(help="Write nothing; exit 1 if generated files are out of date."),
    ] = False,
) -> None:
    """Generate *_pb2.py modules and type stubs from .proto files."""
    try:
        files = generate(root, out=out, check=check)
    except CodegenError as exc:
        _err.print(str(exc), style="red", markup=False)
        if exc.files:
            _err.print(f"Run `chirp gen {root}` to update them.", markup=False)
        raise typer.Exit(1) from exc

    _report_generated(files, root=root, check=check)


def _report_generated(files: list[Path], *, root: Path, check: bool) -> None:
    if not files:
        _out.print(f"No .proto files under {root}.", markup=False)
        return

    verb = "Up to date" if check else "Generated"
    for path in files:
        _out.print(f"{verb}: {_display(path)}", markup=False)
    _out.print(f"{len(files)} file(s).", markup=False)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


_Modules = Annotated[
    list[str],
    typer.Argument(
        metavar="MODULE", help="Modules whose top-level @worker functions to run."
    ),
]
_Paths = Annotated[
    list[Path] | None,
    typer.Option(
        "--path",
        help="Directory to import modules from (repeatable); the current one always.",
        exists=True,
        file_okay=False,
    ),
]
_Grace = Annotated[
    float,
    typer.Option(help="Seconds in-flight handlers get to finish on SIGTERM/SIGINT."),
]
_NatsUrl = Annotated[
    str | None, typer.Option(envvar=NATS_URL_VARIABLE, help="NATS server URL.")
]
_RedisUrl = Annotated[
    str | None, typer.Option(envvar=REDIS_URL_VARIABLE, help="Redis server URL.")
]
_Namespace = Annotated[
    str | None,
    typer.Option(
        envvar=NAMESPACE_VARIABLE, help="Prefix of every subject and key (kebab-case)."
    ),
]


@app.command()
def run(
    modules: _Modules,
    path: _Paths = None,
    grace: _Grace = DEFAULT_GRACE,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Run every worker of MODULE... until SIGTERM or SIGINT."""
    workers = _load_or_exit(modules, path)
    _run_or_exit(
        run_host(
            workers,
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=namespace,
            grace=grace,
        )
    )


@app.command()
def dev(
    modules: _Modules,
    path: _Paths = None,
    grace: _Grace = 5.0,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Run the workers of MODULE...; with no server URL set, start embedded servers."""
    workers = _load_or_exit(modules, path)
    if bool(nats_url) != bool(redis_url):
        _err.print(
            f"set both {NATS_URL_VARIABLE} and {REDIS_URL_VARIABLE} to use external "
            "servers, or neither to start embedded ones",
            style="red",
            markup=False,
        )
        raise typer.Exit(2)
    if nats_url:
        host = run_host(
            workers,
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=namespace,
            grace=grace,
        )
    else:
        host = _dev_with_embedded_servers(workers, namespace, grace)
    _run_or_exit(host)


async def _dev_with_embedded_servers(
    workers: list[Worker[Any]], namespace: str | None, grace: float
) -> None:
    async with embedded_servers() as servers:
        _err.print(
            f"Embedded servers: {NATS_URL_VARIABLE}={servers.nats_url} "
            f"{REDIS_URL_VARIABLE}={servers.redis_url}",
            markup=False,
        )
        await run_host(
            workers,
            nats_url=servers.nats_url,
            redis_url=servers.redis_url,
            namespace=namespace,
            grace=grace,
        )


def _load_or_exit(modules: list[str], paths: list[Path] | None) -> list[Worker[Any]]:
    for directory in reversed([Path.cwd(), *(paths or [])]):
        text = str(directory.resolve())
        if text not in sys.path:
            sys.path.insert(0, text)
    try:
        return load_workers(modules)
    except ChirpError as exc:
        _err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc


def _run_or_exit(job: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(job)
    except ChirpError as exc:
        _err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc


def main() -> None:
    """Run the `chirp` command line."""
    app()
