"""The `chirp` commands that look into a live system.

`publish`, `listen`, `tail`, `call`, `status` and `trace` each parse their options,
hand the work to `chirp._inspect` and print the outcome: rich tables and coloured
JSON on a terminal; when piped, compact JSON (one value a line) or tab-separated
text; `--json` forces JSON. Importing this module registers the commands on
`chirp._cli.app`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as redis_asyncio
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from chirp import _inspect, _state
from chirp._cli import app
from chirp._cli_options import Namespace as _Namespace
from chirp._cli_options import NatsUrl as _NatsUrl
from chirp._cli_options import Paths as _Paths
from chirp._cli_options import RedisUrl as _RedisUrl
from chirp._client import Client
from chirp._config import NAMESPACE_VARIABLE, REDIS_URL_VARIABLE
from chirp._errors import ChirpError, MessageFailed, OperationError, UsageError
from chirp._wire import Names

CLIENT_NAME = "chirp-cli"

_Modules = Annotated[
    list[str] | None,
    typer.Option(
        "--module",
        help="Module to import (repeatable): generated _pb2 modules, worker modules.",
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="Print JSON, even on a terminal.")]
_Message = Annotated[str, typer.Argument(help="The message name, e.g. user-create.")]


# Output ----------------------------------------------------------------------------


class _Printer:
    """Print records and tables the way the output stream wants them."""

    def __init__(self, json_output: bool) -> None:
        self.console = Console(highlight=False)
        self.errors = Console(stderr=True, highlight=False)
        self.rich = self.console.is_terminal and not json_output
        self.json = json_output

    def record(self, data: Any) -> None:
        """Print one JSON value: coloured on a terminal, else on one line."""
        if self.rich:
            self.console.print_json(data=data)
        else:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()

    def note(self, text: str, *, style: str | None = None) -> None:
        """Print a line for humans to stderr, so stdout stays machine-readable."""
        self.errors.print(text, style=style, markup=False)

    def rows(self, title: str, header: Sequence[str], rows: list[list[str]]) -> None:
        """Print a table: rich on a terminal, tab-separated lines when piped."""
        if self.rich:
            self.console.print(_table(title, header, rows))
            return
        for row in [list(header), *rows]:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()


def _table(title: str, header: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(*header, title=title, title_justify="left", header_style="bold cyan")
    for row in rows:
        table.add_row(*row)
    return table


# Running ---------------------------------------------------------------------------


def _run(printer: _Printer, job: Coroutine[Any, Any, int]) -> None:
    """Run a command's coroutine and exit with its code; Ctrl-C ends it quietly."""
    try:
        code = asyncio.run(job)
    except KeyboardInterrupt:
        code = 0
    except UsageError as error:
        printer.note(str(error), style="red")
        code = 2
    except ChirpError as error:
        printer.note(str(error), style="red")
        code = 1
    if code:
        raise typer.Exit(code)


def _load(modules: list[str] | None, paths: list[Path] | None) -> _inspect.Loaded:
    try:
        return _inspect.load(modules or [], paths or [])
    except ChirpError as error:
        Console(stderr=True).print(str(error), style="red", markup=False)
        raise typer.Exit(2) from error


async def _with_client(
    urls: tuple[str | None, str | None, str | None],
    job: Callable[[Client], Awaitable[int]],
) -> int:
    nats_url, redis_url, namespace = urls
    client = Client(
        CLIENT_NAME, nats_url=nats_url, redis_url=redis_url, namespace=namespace
    )
    async with client:
        return await job(client)


async def _with_redis(
    redis_url: str | None,
    namespace: str | None,
    job: Callable[[redis_asyncio.Redis, Names], Awaitable[int]],
) -> int:
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        raise UsageError(f"no Redis URL: set {REDIS_URL_VARIABLE} or pass --redis-url")
    names = Names(namespace or os.environ.get(NAMESPACE_VARIABLE, ""))
    redis = redis_asyncio.Redis.from_url(url)
    try:
        return await job(redis, names)
    finally:
        await redis.aclose()


# publish, listen, tail, call ---------------------------------------------------------


@app.command()
def publish(
    message: _Message,
    json_body: Annotated[
        str, typer.Option("--json", help="The body as a JSON object.")
    ] = "{}",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Set a parameter field: name=value (repeatable)."),
    ] = None,
    wait: Annotated[
        str | None, typer.Option(help="Wait for this completion message; print it.")
    ] = None,
    fail: Annotated[
        str | None, typer.Option(help="With --wait: a failure message that ends it.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 60.0,
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Publish MESSAGE with a JSON body; print its ids, or with --wait the reply."""
    loaded = _load(module, path)
    printer = _Printer(json_output=False)

    async def job(client: Client) -> int:
        spec = loaded.spec(message)
        parameters = _inspect.assignments(param or [])
        spec.parameters_from(dict(parameters))
        body = _inspect.body_from_json(spec.cls, json_body, parameters)
        if fail is not None and wait is None:
            raise UsageError("--fail needs --wait")
        try:
            outcome = await _inspect.publish(
                client.context(),
                body,
                wait=None if wait is None else loaded.spec(wait),
                fail=None if fail is None else loaded.spec(fail),
                timeout=timeout,
            )
        except MessageFailed as error:
            printer.record(_inspect.error_record(error))
            return 1
        printer.record(outcome)
        return 0

    _run(printer, _with_client((nats_url, redis_url, namespace), job))


@app.command()
def listen(
    message: _Message,
    parameters: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NAME=VALUE]...", help="Parameter values; unset ones match any."
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many messages.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.")
    ] = None,
    json_output: _Json = False,
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Print each MESSAGE as it is published, until Ctrl-C, --count or --timeout.

    Exits 1 when --timeout passed before --count messages came.
    """
    loaded = _load(module, path)
    printer = _Printer(json_output)

    async def job(client: Client) -> int:
        spec = loaded.spec(message)
        values = _inspect.assignments(parameters or [])
        seen = 0
        stream = _inspect.listen(
            client.context(),
            spec,
            values,
            count=count,
            timeout=timeout,
            ready=lambda subjects: printer.note(f"Listening on {', '.join(subjects)}"),
        )
        async with aclosing(stream):
            async for received in stream:
                printer.record(_inspect.received_record(spec, received))
                seen += 1
        return 1 if count is not None and seen < count else 0

    _run(printer, _with_client((nats_url, redis_url, namespace), job))


@app.command()
def tail(
    message: _Message,
    parameters: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME=VALUE...", help="Every parameter's value."),
    ] = None,
    json_output: _Json = False,
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Print the kept tail of MESSAGE for one parameter set; exit 1 if there is none."""
    loaded = _load(module, path)
    printer = _Printer(json_output)

    async def job(client: Client) -> int:
        spec = loaded.spec(message)
        values = _inspect.assignments(parameters or [])
        received = await client.context().tail_read(spec.cls, values)
        if received is None:
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            printer.note(f"no tail of {message} {shown} is kept", style="yellow")
            return 1
        printer.record(_inspect.received_record(spec, received))
        return 0

    _run(printer, _with_client((nats_url, redis_url, namespace), job))


@app.command()
def call(
    operation: Annotated[str, typer.Argument(help="The operation's name.")],
    json_body: Annotated[
        str, typer.Option("--json", help="The request as a JSON object.")
    ] = "{}",
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Call OPERATION in this process; print the response, or the error (exit 1)."""
    loaded = _load(module, path)
    printer = _Printer(json_output=False)

    async def job(client: Client) -> int:
        found = loaded.operation(operation)
        try:
            response = await _inspect.call(client.context(), found, json_body)
        except UsageError:
            raise
        except ChirpError as error:
            _print_error(printer, error)
            return 1
        printer.record(_inspect.body_to_dict(response))
        return 0

    _run(printer, _with_client((nats_url, redis_url, namespace), job))


def _print_error(printer: _Printer, error: ChirpError) -> None:
    record = _inspect.error_record(error)
    if printer.rich:
        code = record["code"] if isinstance(error, OperationError) else "error"
        printer.note(f"{code}: {record['message']}", style="red")
        return
    printer.record({"error": record})


# status ----------------------------------------------------------------------------

_STATUS_HEADER = (
    "worker",
    "message",
    "stream",
    "lag",
    "pending",
    "scheduled",
    "dead",
    "retries",
    "consumers (idle)",
)


@app.command()
def status(
    watch: Annotated[bool, typer.Option(help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    json_output: _Json = False,
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Show each worker's backlog, pending, retries, dead letters and consumers."""
    del nats_url  # accepted like every command's; status reads Redis only
    loaded = _load(module, path)
    known = [(w.name, w.spec.name) for w in loaded.workers]
    printer = _Printer(json_output)

    async def once(redis: redis_asyncio.Redis, names: Names) -> int:
        _print_status(printer, await _state.status(redis, names, known))
        return 0

    async def live(redis: redis_asyncio.Redis, names: Names) -> int:
        await _watch_status(printer, redis, names, known, interval)
        return 0

    chosen = live if watch else once
    _run(printer, _with_redis(redis_url, namespace, chosen))


async def _watch_status(
    printer: _Printer,
    redis: redis_asyncio.Redis,
    names: Names,
    known: list[tuple[str, str]],
    interval: float,
) -> None:
    if not printer.rich:
        while True:
            _print_status(printer, await _state.status(redis, names, known))
            await asyncio.sleep(interval)
    with Live(console=printer.console, auto_refresh=False) as live:
        while True:
            statuses = await _state.status(redis, names, known)
            live.update(_status_table(statuses, names), refresh=True)
            await asyncio.sleep(interval)


def _print_status(printer: _Printer, statuses: list[_state.WorkerStatus]) -> None:
    if printer.json:
        printer.record([s.describe() for s in statuses])
        return
    if not statuses:
        printer.note("No workers: no consumer group on any stream, no --module worker.")
    if printer.rich:
        printer.console.print(_status_table(statuses, None))
        return
    printer.rows("", _STATUS_HEADER, [_status_row(s) for s in statuses])


def _status_table(statuses: list[_state.WorkerStatus], names: Names | None) -> Table:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    where = f" in {names.namespace}" if names and names.namespace else ""
    table = _table(f"Workers{where} at {stamp} UTC", _STATUS_HEADER, [])
    for state in statuses:
        table.add_row(*_status_row(state), style=_status_style(state))
    return table


def _status_row(state: _state.WorkerStatus) -> list[str]:
    consumers = ", ".join(
        f"{c.name} ({c.idle_ms / 1000:.1f}s)" for c in state.consumers
    )
    return [
        state.worker,
        state.message,
        str(state.stream_length),
        "?" if state.lag is None else str(state.lag),
        str(state.pending),
        str(state.scheduled),
        str(state.dead_letters),
        str(state.retries),
        consumers if state.group else "no group yet",
    ]


def _status_style(state: _state.WorkerStatus) -> str | None:
    if state.dead_letters:
        return "red"
    if state.scheduled or (state.lag or 0) > 0:
        return "yellow"
    return None


# trace -----------------------------------------------------------------------------


@app.command()
def trace(
    ray_id: Annotated[str, typer.Argument(help="The ray id.")],
    json_output: _Json = False,
    module: _Modules = None,
    path: _Paths = None,
    nats_url: _NatsUrl = None,
    redis_url: _RedisUrl = None,
    namespace: _Namespace = None,
) -> None:
    """Show every message of a ray still in the streams, and its dead letters."""
    del nats_url  # accepted like every command's; trace reads Redis only
    _load(module, path)
    printer = _Printer(json_output)

    async def job(redis: redis_asyncio.Redis, names: Names) -> int:
        found = await _state.trace(redis, names, ray_id)
        if printer.json:
            printer.record(found.describe())
        else:
            _print_trace(printer, found)
        return 0 if found.messages or found.dead_letters else 1

    _run(printer, _with_redis(redis_url, namespace, job))


def _print_trace(printer: _Printer, found: _state.RayTrace) -> None:
    if not found.messages and not found.dead_letters:
        printer.note(f"no message of ray {found.ray_id} is kept", style="yellow")
        return
    printer.rows(
        f"Ray {found.ray_id}",
        ("time", "message", "parameters", "request", "hops"),
        [_trace_row(m) for m in found.messages],
    )
    if found.dead_letters:
        printer.rows(
            "Dead letters",
            ("time", "worker", "message", "request", "attempts", "reason"),
            [_dead_row(d) for d in found.dead_letters],
        )


def _trace_row(message: _state.RayMessage) -> list[str]:
    parameters = " ".join(f"{k}={v}" for k, v in message.parameters.items())
    hops = " > ".join(message.hops)
    return [_time(message.ts), message.name, parameters, message.request_id, hops]


def _dead_row(letter: dict[str, Any]) -> list[str]:
    return [
        _time(letter["ts"]),
        letter["worker"],
        letter.get("name", "?"),
        letter.get("request_id", "?"),
        str(letter["attempts"]),
        letter["reason"],
    ]


def _time(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
