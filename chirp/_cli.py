"""The `chirp` command line.

Each command is one function registered on `app`; its work lives in a library module,
and the function only parses options, calls it and reports. Logging is configured here
and nowhere else: the library only creates loggers.
"""

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as redis_asyncio
import typer
from rich.console import Console
from rich.table import Table

from chirp._cli_options import Namespace as _Namespace
from chirp._cli_options import NatsUrl as _NatsUrl
from chirp._cli_options import Paths as _Paths
from chirp._cli_options import RedisUrl as _RedisUrl
from chirp._codegen import CodegenError, generate
from chirp._config import NAMESPACE_VARIABLE, NATS_URL_VARIABLE, REDIS_URL_VARIABLE
from chirp._dead_letters import DeadLetters
from chirp._embedded import embedded_servers
from chirp._errors import ChirpError, UsageError
from chirp._host import DEFAULT_GRACE, load_workers, run_host
from chirp._logs import configure as configure_logging
from chirp._wire import Names
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
    log_messages: Annotated[
        bool,
        typer.Option(
            "--log-messages", help="Log one line per handled message (with -v too)."
        ),
    ] = False,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log JSON lines to stderr.")
    ] = False,
) -> None:
    """Operations, messages and workers for services on NATS and Redis Streams."""
    level = logging.DEBUG if verbose else logging.INFO
    configure_logging(level, as_json=log_json, console=_err)
    if not (verbose or log_messages):
        # A line per message would drown everything else at a few thousand a second.
        logging.getLogger("chirp.handled").setLevel(logging.WARNING)


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
_Grace = Annotated[
    float,
    typer.Option(help="Seconds in-flight handlers get to finish on SIGTERM/SIGINT."),
]


_HealthPort = Annotated[
    int | None,
    typer.Option(
        envvar="CHIRP_HEALTH_PORT",
        help="Serve GET /livez, /readyz and /metrics on this port (none by default).",
    ),
]
_HealthHost = Annotated[
    str, typer.Option(help="Address the health endpoint listens on.")
]


@app.command()
def run(
    modules: _Modules,
    path: _Paths = None,
    grace: _Grace = DEFAULT_GRACE,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
    health_port: _HealthPort = None,
    health_host: _HealthHost = "0.0.0.0",
) -> None:
    """Run every worker of MODULE... until SIGTERM or SIGINT."""
    workers = _load_or_exit(modules, path)
    health = None if health_port is None else (health_host, health_port)
    _run_or_exit(
        run_host(
            workers,
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=namespace,
            grace=grace,
            health=health,
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
    reload: Annotated[
        bool, typer.Option(help="Restart the workers when .py/.proto files change.")
    ] = False,
) -> None:
    """Run the workers of MODULE...; with no server URL set, start embedded servers."""
    if reload:
        from chirp._reload import run_dev_with_reload

        raise typer.Exit(
            run_dev_with_reload(
                modules,
                paths=path,
                grace=grace,
                nats_url=nats_url,
                redis_url=redis_url,
                namespace=namespace,
            )
        )
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
        # Plain, unwrapped: the line is meant to be pasted into another shell.
        typer.echo(
            f"Embedded servers: export {NATS_URL_VARIABLE}={servers.nats_url} "
            f"{REDIS_URL_VARIABLE}={servers.redis_url}",
            err=True,
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


dead_letters = typer.Typer(
    name="dead-letters",
    no_args_is_help=True,
    help="List, show, replay or drop a worker's dead letters.",
)
app.add_typer(dead_letters)

_Worker = Annotated[str, typer.Argument(help="The worker's name.")]
_Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_Ids = Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (see `list`).")]
_All = Annotated[bool, typer.Option("--all", help="Every dead letter of the worker.")]


@dead_letters.command("list")
def dead_letters_list(
    worker: _Worker,
    count: Annotated[int, typer.Option(help="How many, oldest first.")] = 100,
    json_output: _Json = False,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """List a worker's dead letters with their reasons and attempt counts."""

    async def job(store: DeadLetters) -> None:
        letters = [letter.describe() for letter in await store.oldest(count)]
        if json_output:
            _out.print_json(data=letters)
            return
        table = Table("id", "entry", "message", "attempts", "reason")
        for row in letters:
            table.add_row(
                row["dead_id"],
                row["entry_id"],
                row.get("name", "?"),
                str(row["attempts"]),
                row["reason"],
            )
        _out.print(table)
        _out.print(f"{len(letters)} dead letter(s) of {worker}.", markup=False)

    _run_or_exit(_with_dead_letters(worker, redis_url, namespace, job))


@dead_letters.command("show")
def dead_letters_show(
    worker: _Worker,
    dead_id: Annotated[str, typer.Argument(help="The dead letter's id.")],
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Show one dead letter as JSON, with its envelope decoded."""

    async def job(store: DeadLetters) -> None:
        _out.print_json(data=(await store.get(dead_id)).describe())

    _run_or_exit(_with_dead_letters(worker, redis_url, namespace, job))


@dead_letters.command("replay")
def dead_letters_replay(
    worker: _Worker,
    dead_ids: _Ids = None,
    all_: _All = False,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Hand dead letters back to the worker, keeping their ray and request ids."""

    async def job(store: DeadLetters) -> None:
        ids = await _chosen(store, dead_ids, all_)
        replayed = await store.replay(ids)
        _out.print(f"Replayed {replayed} dead letter(s) to {worker}.", markup=False)

    _run_or_exit(_with_dead_letters(worker, redis_url, namespace, job))


@dead_letters.command("drop")
def dead_letters_drop(
    worker: _Worker,
    dead_ids: _Ids = None,
    all_: _All = False,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Delete dead letters for good."""

    async def job(store: DeadLetters) -> None:
        dropped = await store.drop(await _chosen(store, dead_ids, all_))
        _out.print(f"Dropped {dropped} dead letter(s) of {worker}.", markup=False)

    _run_or_exit(_with_dead_letters(worker, redis_url, namespace, job))


async def _chosen(
    store: DeadLetters, dead_ids: list[str] | None, all_: bool
) -> list[str]:
    if all_ == bool(dead_ids):
        raise UsageError("name dead-letter ids, or pass --all (not both)")
    return await store.all_ids() if all_ else list(dead_ids or [])


async def _with_dead_letters(
    worker: str,
    redis_url: str | None,
    namespace: str | None,
    job: Callable[[DeadLetters], Awaitable[None]],
) -> None:
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        raise UsageError(f"no Redis URL: set {REDIS_URL_VARIABLE} or pass --redis-url")
    names = Names(namespace or os.environ.get(NAMESPACE_VARIABLE, ""))
    redis = redis_asyncio.Redis.from_url(url)
    try:
        await job(DeadLetters(redis, names, worker))
    finally:
        await redis.aclose()


def _run_or_exit(job: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(job)
    except ChirpError as exc:
        _err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc


@app.command()
def errors(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="An errors.toml file, or a directory holding one (repeatable).",
        ),
    ] = None,
) -> None:
    """Print the error codes of PATH... and Chirp's own as a Markdown reference."""
    # Imported here: no other command needs the registry.
    from chirp._registry import Registry

    try:
        registry = Registry.load(*(paths or []))
    except ChirpError as exc:
        _err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc

    # Plain stdout, not the rich console: the reference must not wrap or be styled.
    typer.echo(registry.reference(), nl=False)


import chirp._cli_scaffold  # noqa: E402,F401
from chirp import _cli_inspect  # noqa: E402,F401  (registers the inspection commands)


def main() -> None:
    """Run the `chirp` command line."""
    app()
