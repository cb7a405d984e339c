"""Fault-injection helpers: worker host processes, and the ledger their workers keep.

Every test here runs `chirp run ledger_workers` processes (see `ledger_workers.py`)
against real servers, breaks something (kills, restarts, dropped connections, poison
entries), and then checks the delivery promise from outside: every published request id
is in the ledger of every consuming worker, and nothing is left pending, scheduled or
dead-lettered.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from chirptest.messages_pb2 import Ping
from ledger_workers import key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError

from chirp import Client, Context
from chirp.testing import EmbeddedServers

FAULTS = Path(__file__).parent
WORKERS = ("ledger-a", "ledger-b")
MESSAGE = "test-ping"
_READY_TIMEOUT = 20.0


class Host:
    """One `chirp run` process and its log file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """Send SIGTERM: the host drains and exits by itself."""
        self.process.send_signal(signal.SIGTERM)

    def rss_kb(self) -> int:
        """Return the resident set size, from /proc."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    async def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until the host logged that its consumers run."""
        deadline = time.monotonic() + timeout
        while "running" not in self.log.read_text(errors="replace"):
            assert self.alive(), f"host exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"host not ready:\n{self.output()}"
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; return its code, None if it runs."""
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        """Return the last lines the host logged."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


class HostPool:
    """Start worker host processes against given servers, in one namespace."""

    def __init__(
        self, *, nats_url: str, redis_url: str, namespace: str, log_dir: Path
    ) -> None:
        self._env = {
            **os.environ,
            "CHIRP_NATS_URL": nats_url,
            "CHIRP_REDIS_URL": redis_url,
            "CHIRP_NAMESPACE": namespace,
            # One log record per line, so the readiness check finds its word.
            "COLUMNS": "400",
        }
        self._log_dir = log_dir
        self.started: list[Host] = []

    async def start(self, *, grace: float = 5.0, **settings: object) -> Host:
        """Start a host with `FAULTS_*` settings and wait until it consumes.

        Args:
            grace: The host's `--grace`.
            settings: `lease=1` becomes `FAULTS_LEASE=1`, and so on.
        """
        host = self.spawn(grace=grace, **settings)
        await host.wait_ready()
        return host

    def spawn(self, *, grace: float = 5.0, **settings: object) -> Host:
        """Start a host and return at once, without waiting for it to consume."""
        env = dict(self._env)
        for name, value in settings.items():
            env[f"FAULTS_{name.upper()}"] = str(value)
        log = self._log_dir / f"host-{len(self.started)}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "chirp", "run"),
                    *("--path", str(FAULTS.parent), "--path", str(FAULTS)),
                    *("--grace", str(grace), "ledger_workers"),
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        host = Host(process, log)
        self.started.append(host)
        return host

    def close(self) -> None:
        """Kill every host still running."""
        for host in self.started:
            if host.alive():
                host.kill()


@pytest.fixture
def make_hosts(unique_name: str, tmp_path: Path) -> Iterator[Callable[..., HostPool]]:
    """Return a function making a `HostPool` for given server URLs."""
    pools: list[HostPool] = []

    def make(nats_url: str, redis_url: str) -> HostPool:
        pool = HostPool(
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=unique_name,
            log_dir=tmp_path,
        )
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def hosts(servers: EmbeddedServers, make_hosts: Callable[..., HostPool]) -> HostPool:
    """Return a `HostPool` on the session's servers."""
    return make_hosts(servers.nats_url, servers.redis_url)


class Ledger:
    """Read what the workers recorded and what Chirp left behind, for one namespace."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._redis: redis_asyncio.Redis = client.redis
        self._names = client.names
        self.prefix = key_prefix(client.names.namespace)

    async def handled(self, worker: str) -> set[str]:
        """Return the request ids `worker` recorded as handled."""
        members = await self._redis.smembers(f"{self.prefix}:ledger:{worker}")
        return {m.decode() for m in members}

    async def missing(
        self, ids: Iterable[str], workers: Iterable[str]
    ) -> dict[str, int]:
        """Return, per worker, how many of `ids` it has not recorded."""
        wanted = set(ids)
        return {w: len(wanted - await self.handled(w)) for w in workers}

    async def wait_handled(
        self, ids: Iterable[str], workers: Iterable[str] = WORKERS, timeout: float = 30
    ) -> None:
        """Wait until every id is in the ledger of every worker."""
        ids, workers = list(ids), list(workers)
        missing: dict[str, int] = {}

        async def done() -> bool:
            missing.update(await self.missing(ids, workers))
            return not any(missing.values())

        await eventually(
            done, timeout, lambda: f"ids not handled, per worker: {missing}"
        )

    async def leftovers(self, worker: str) -> dict[str, int]:
        """Return what is still pending, scheduled or recorded for `worker`."""
        names, redis = self._names, self._redis
        pending = await redis.xpending(names.stream_key(MESSAGE), worker)
        return {
            "pending": int(pending["pending"]),
            "scheduled": await redis.zcard(names.retry_key(worker)),
            "attempts": await redis.hlen(names.attempts_key(worker)),
            "owners": await redis.hlen(names.owners_key(worker)),
            "retry_data": await redis.hlen(names.retry_data_key(worker)),
        }

    async def wait_settled(
        self, workers: Iterable[str] = WORKERS, timeout: float = 15
    ) -> None:
        """Wait until nothing is pending or scheduled for any of `workers`."""
        workers = list(workers)
        state: dict[str, dict[str, int]] = {}

        async def settled() -> bool:
            for worker in workers:
                state[worker] = await self.leftovers(worker)
            return not any(v for left in state.values() for v in left.values())

        await eventually(settled, timeout, lambda: f"not settled: {state}")

    async def dead_letters(self, worker: str) -> list[dict[str, bytes]]:
        """Return the fields of the dead-letter entries of `worker`."""
        entries = await self._redis.xrange(self._names.dead_letter_key(worker))
        return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]

    async def stats(self, worker: str) -> dict[str, int]:
        """Return the counters Chirp keeps for `worker`."""
        raw = await self._redis.hgetall(self._names.stats_key(worker))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def troubles(self, worker: str) -> dict[str, int]:
        """Return the counters of `worker` that must stay 0 when nothing goes wrong.

        Retries are left out: some faults make handlers fail on purpose.
        """
        stats = await self.stats(worker)
        return {k: v for k, v in stats.items() if v and k != "retries"}

    async def starts(self, worker: str, key: str) -> list[tuple[int, int, float]]:
        """Return `(attempt, pid, time)` of each traced start of a message."""
        items = await self._redis.lrange(f"{self.prefix}:starts:{worker}:{key}", 0, -1)
        parsed = [item.decode().split() for item in items]
        return [(int(a), int(p), float(t)) for a, p, t in parsed]

    async def runs(self, worker: str) -> list[tuple[str, float, float, int]]:
        """Return `(key, start, end, pid)` of each finished sleeping run."""
        items = await self._redis.lrange(f"{self.prefix}:runs:{worker}", 0, -1)
        parsed = [item.decode().split() for item in items]
        return [(k, float(s), float(e), int(p)) for k, s, e, p in parsed]


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    describe: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll `check` until it is true; fail with `describe()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _checked(check):
        assert time.monotonic() < deadline, f"not within {timeout}s: {describe()}"
        await asyncio.sleep(interval)


async def _checked(check: Callable[[], Awaitable[bool]]) -> bool:
    # A connection of the test's own may have been dropped by the fault under test;
    # redis-py reconnects on the next call.
    try:
        return await check()
    except RedisConnectionError:
        return False


async def publish_pings(
    ctx: Context, count: int, *, chunk: int = 500, **fields: Any
) -> list[str]:
    """Publish `count` pings (keys `p0`, `p1`, ...) and return their request ids."""
    ids: list[str] = []
    for first in range(0, count, chunk):
        batch = range(first, min(first + chunk, count))
        sent = await asyncio.gather(
            *(ctx.msg(Ping(key=f"p{i}", **fields)) for i in batch)
        )
        ids.extend(p.request_id for p in sent)
    return ids
