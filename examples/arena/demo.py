"""Run the arena end to end and check every answer.

    PYTHONPATH=examples python -m arena.demo [--requests N]

Starts embedded NATS and Valkey servers, the worker host (``python -m chirp run``)
with the user and notify workers, and the gateway under uvicorn, each in a process of
its own with a fresh database. Then sends real HTTP traffic through the gateway, shows
progress, and prints a summary. Exits 0 only if every request got its expected answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
from chirp import Client, Worker, message_spec
from chirp._embedded import EmbeddedServers, embedded_servers
from redis.exceptions import ResponseError
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

from arena.notify import workers as notify_workers
from arena.proto.notify_pb2 import NotificationCreate
from arena.proto.user_pb2 import (
    UserCreate,
    UserCreateComplete,
    UserCreateFail,
    UserFollow,
    UserFollowComplete,
    UserFollowFail,
)
from arena.report import SystemStats, WorkerStats, print_ray, print_summary
from arena.traffic import FOLLOW, Answer, Call, Plan, Runner, Tally
from arena.user import workers as user_workers

T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parent.parent
WORKER_MODULES: tuple[ModuleType, ...] = (user_workers, notify_workers)
MESSAGES = (
    UserCreate,
    UserCreateComplete,
    UserCreateFail,
    UserFollow,
    UserFollowComplete,
    UserFollowFail,
    NotificationCreate,
)
_STARTUP_TIMEOUT = 30.0
_STOP_GRACE = 10.0
_POLL_INTERVAL = 0.1
_LOG_TAIL_LINES = 20


class ServiceFailed(Exception):
    """A process of the demo ended while needed, or did not come up in time."""


class Service:
    """A process of the demo, its output going to a log file.

    Args:
        name: What the process is, for messages.
        command: The program and its arguments.
        env: The process's environment.
        log: The file its standard output and error go to.
    """

    def __init__(
        self, name: str, command: Sequence[str], *, env: dict[str, str], log: Path
    ) -> None:
        self.name = name
        self.log = log
        self._command = command
        self._env = env
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process."""
        with self.log.open("wb") as output:
            self._process = await asyncio.create_subprocess_exec(
                *self._command, env=self._env, stdout=output, stderr=output
            )

    def check(self) -> None:
        """Raise `ServiceFailed` if the process has ended."""
        if self._process is not None and self._process.returncode is not None:
            raise ServiceFailed(
                f"the {self.name} exited with status {self._process.returncode}"
            )

    async def exited(self) -> None:
        """Wait until the process ends, then raise `ServiceFailed`."""
        if self._process is not None:
            await self._process.wait()
        self.check()

    async def stop(self) -> None:
        """Ask the process to end (SIGTERM); kill it if it has not after a while."""
        process = self._process
        if process is None or process.returncode is not None:
            return

        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), _STOP_GRACE)
        except TimeoutError:
            process.kill()
            await process.wait()

    def log_tail(self) -> str:
        """Return the last lines the process wrote."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    """Run a service for the duration of the block; stop it however the block ends."""
    try:
        await service.start()
        yield service
    finally:
        await service.stop()


def workers() -> list[Worker[Any]]:
    """Return the workers the worker host runs."""
    return [
        value
        for module in WORKER_MODULES
        for value in vars(module).values()
        if isinstance(value, Worker)
    ]


def service_environment(servers: EmbeddedServers, database: Path) -> dict[str, str]:
    """Return the environment of the worker host and the gateway."""
    path = [str(EXAMPLES), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "CHIRP_NATS_URL": servers.nats_url,
        "CHIRP_REDIS_URL": servers.redis_url,
        "ARENA_DB": str(database),
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONUNBUFFERED": "1",
    }


def worker_host(env: dict[str, str], workdir: Path) -> Service:
    """Return the worker host process: ``python -m chirp run`` with both packages."""
    # JSON lines, one per handled message too, so a ray can be followed in the log.
    command = [sys.executable, "-m", "chirp", "--log-json", "--log-messages"]
    command += ["run", "--grace", "5"]
    command += [module.__name__ for module in WORKER_MODULES]
    return Service("worker host", command, env=env, log=workdir / "workers.log")


def gateway(env: dict[str, str], workdir: Path, port: int) -> Service:
    """Return the gateway process: uvicorn serving `arena.gateway:app` on `port`."""
    command = [sys.executable, "-m", "uvicorn", "arena.gateway:app"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    return Service("gateway", command, env=env, log=workdir / "gateway.log")


def free_port() -> int:
    """Return a loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for_gateway(url: str, service: Service) -> None:
    """Wait until the gateway answers ``GET /health``."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=url) as http:
        while time.monotonic() < deadline:
            service.check()
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(_POLL_INTERVAL)
    raise ServiceFailed(f"the gateway did not answer within {_STARTUP_TIMEOUT}s")


async def wait_for_workers(client: Client, service: Service) -> None:
    """Wait until every worker's consumer group exists: the host is consuming."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    waiting = workers()
    while waiting:
        service.check()
        if time.monotonic() > deadline:
            names = ", ".join(worker.name for worker in waiting)
            raise ServiceFailed(f"workers {names} did not start consuming")
        waiting = [w for w in waiting if not await _has_group(client, w)]
        await asyncio.sleep(_POLL_INTERVAL if waiting else 0)


async def _has_group(client: Client, worker: Worker[Any]) -> bool:
    stream = client.names.stream_key(worker.spec.name)
    try:
        groups = await client.redis.xinfo_groups(stream)
    except ResponseError:  # the stream does not exist yet
        return False
    return any(group["name"].decode() == worker.name for group in groups)


async def send_traffic(
    url: str, plan: Plan, *, console: Console, concurrency: int
) -> Tally:
    """Send the plan's phases through the gateway, one after another, with progress."""
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn())
    limits = httpx.Limits(max_connections=concurrency)
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            runner = Runner(http, concurrency=concurrency)
            calls = plan.creates()
            answers = await _phase(progress, runner, "create users", calls)
            plan.record_created(calls, answers)
            if not plan.user_ids:
                return runner.tally  # nothing to follow or read: all creates failed
            await _phase(progress, runner, "follow, refuse", plan.writes())
            await _phase(progress, runner, "read, refollow", plan.reads())
            await _phase(progress, runner, "notifications", plan.notifications())
    return runner.tally


async def _phase(
    progress: Progress, runner: Runner, description: str, calls: Sequence[Call]
) -> list[Answer]:
    task = progress.add_task(description, total=len(calls))
    return await runner.run(calls, on_done=lambda: progress.advance(task))


async def system_stats(client: Client) -> SystemStats:
    """Read the messages per topic and each worker's retries and dead letters."""
    names, redis = client.names, client.redis
    topics = []
    for message in MESSAGES:
        topic = message_spec(message).name
        topics.append((topic, await redis.xlen(names.stream_key(topic))))
    counters = []
    for worker in workers():
        retries = await redis.hget(names.stats_key(worker.name), "retries")
        dead = await redis.xlen(names.dead_letter_key(worker.name))
        stats = WorkerStats(worker.name, worker.spec.name, int(retries or 0), dead)
        counters.append(stats)
    return SystemStats(topics, counters)


async def watched(job: Coroutine[Any, Any, T], services: Sequence[Service]) -> T:
    """Run `job`, but stop it and raise `ServiceFailed` if a service ends first."""
    work = asyncio.ensure_future(job)
    watches = [asyncio.ensure_future(service.exited()) for service in services]
    try:
        done, _ = await asyncio.wait([work, *watches], return_when=FIRST_COMPLETED)
    finally:
        for task in (work, *watches):
            task.cancel()
        await asyncio.gather(work, *watches, return_exceptions=True)

    for watch in watches:
        if watch in done:
            watch.result()
    return work.result()


async def run_demo(options: argparse.Namespace, console: Console) -> bool:
    """Run the whole system, send the traffic, print the summary.

    Returns:
        Whether every request got its expected answer.
    """
    with _workdir(options.workdir) as workdir:
        async with embedded_servers() as servers:
            console.print(
                f"[bold]Arena demo[/]: {options.requests} requests, "
                f"{options.concurrency} at a time; NATS {servers.nats_url}, "
                f"Valkey {servers.redis_url}"
            )
            env = service_environment(servers, workdir / "arena.sqlite3")
            port = free_port()
            services = (worker_host(env, workdir), gateway(env, workdir, port))
            try:
                return await _exercise(servers, services, port, options, console)
            except ServiceFailed as error:
                _report_exit(console, error, services)
                return False


async def _exercise(
    servers: EmbeddedServers,
    services: tuple[Service, Service],
    port: int,
    options: argparse.Namespace,
    console: Console,
) -> bool:
    url = f"http://127.0.0.1:{port}"
    host, gate = services
    async with AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(running(service))
        client = await stack.enter_async_context(
            Client("demo", nats_url=servers.nats_url, redis_url=servers.redis_url)
        )
        await wait_for_workers(client, host)
        await wait_for_gateway(url, gate)

        started = time.monotonic()
        plan = Plan(options.requests, seed=options.seed)
        traffic = send_traffic(
            url, plan, console=console, concurrency=options.concurrency
        )
        tally = await watched(traffic, services)
        seconds = time.monotonic() - started
        stats = await system_stats(client)

    print_summary(console, tally, stats, seconds=seconds)
    ray_id = tally.rays.get(FOLLOW)
    if ray_id is not None:
        print_ray(console, ray_id, ray_lines(host.log, ray_id))
    return not tally.mismatches


def ray_lines(log: Path, ray_id: str) -> list[str]:
    """Return the log lines of one ray, from a log of JSON lines, as short text."""
    lines = []
    for text in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if record.get("ray_id") == ray_id:
            lines.append(f"{record.get('context', '?')}: {record['message']}")
    return lines


def _report_exit(
    console: Console, error: ServiceFailed, services: Sequence[Service]
) -> None:
    console.print(f"demo stopped: {error}", style="bold red", markup=False)
    for service in services:
        console.rule(f"last lines of the {service.name} log")
        console.print(service.log_tail(), markup=False, highlight=False)


@contextmanager
def _workdir(kept: Path | None) -> Iterator[Path]:
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "arena.sqlite3").unlink(missing_ok=True)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix="arena-demo-") as tmp:
        yield Path(tmp)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m arena.demo",
        description="Run the arena and send HTTP traffic through its gateway.",
    )
    parser.add_argument(
        "--requests", type=int, default=3000, help="about how many requests to send"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight at most"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic plan")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the database and the process logs here (default: a temporary "
        "directory, removed at the end)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo; exit 0 only if every request got its expected answer."""
    options = _parser().parse_args(argv)
    if options.requests < 20 or options.concurrency < 1:
        sys.exit("--requests must be at least 20 and --concurrency at least 1")
    try:
        ok = asyncio.run(_until_terminated(run_demo(options, Console())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("demo interrupted; its processes and servers are stopped")
    sys.exit(0 if ok else 1)


async def _until_terminated(job: Coroutine[Any, Any, T]) -> T:
    # SIGTERM cancels the demo like Ctrl-C does, so that its cleanup still runs:
    # without this the worker host and the gateway would outlive it.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await job


if __name__ == "__main__":
    main()
