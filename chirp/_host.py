"""The worker host: runs every worker of some modules until told to stop."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from chirp._client import Client
from chirp._consumer import Consumer
from chirp._errors import UsageError
from chirp._health import HealthServer
from chirp._worker import Worker, workers_in

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 30.0


def load_workers(modules: Iterable[str]) -> list[Worker[Any]]:
    """Import modules and return the workers defined at their top level.

    Raises:
        UsageError: A module cannot be imported, defines no worker, or two workers share
            a name.
    """
    found: dict[str, Worker[Any]] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            # A syntax error or a failing import inside the module is the user's to
            # fix: name the module and the error, not Chirp's own stack.
            raise UsageError(
                f"cannot import worker module {module_name!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        workers = workers_in(module)
        if not workers:
            raise UsageError(f"module {module_name!r} defines no @worker")
        for worker in workers:
            other = found.get(worker.name)
            if other is not None and other is not worker:
                raise UsageError(f"two workers are named {worker.name!r}")
            found[worker.name] = worker
    return list(found.values())


class WorkerHost:
    """Run consumers for a set of workers in this process.

    Args:
        client: A connected client.
        workers: The workers to run; each becomes one consumer in its group.
        grace: Seconds in-flight handlers get to finish when the host stops.
        health: Where to serve ``/livez`` and ``/readyz`` as (host, port); None
            serves nothing.
    """

    def __init__(
        self,
        client: Client,
        workers: Sequence[Worker[Any]],
        *,
        grace: float = DEFAULT_GRACE,
        health: tuple[str, int] | None = None,
    ) -> None:
        self._client = client
        self._grace = grace
        self.consumer_name = (
            f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        )
        self.consumers = [
            Consumer(worker, client, consumer=self.consumer_name) for worker in workers
        ]
        self._stop = asyncio.Event()
        self.health: HealthServer | None = None
        if health is not None:
            self.health = HealthServer(
                client, self.consumers, host=health[0], port=health[1]
            )

    async def start(self) -> None:
        """Start every consumer, then the health endpoint."""
        for consumer in self.consumers:
            await consumer.start()
        if self.health is not None:
            await self.health.start()
        logger.info(
            "worker host %s running %d worker(s): %s",
            self.consumer_name,
            len(self.consumers),
            ", ".join(c.name for c in self.consumers),
        )

    def stop(self) -> None:
        """Ask the host to stop; `run` then drains and returns."""
        self._stop.set()

    async def drain(self) -> None:
        """Stop every consumer, giving in-flight handlers the grace period."""
        logger.info(
            "worker host %s stopping (grace %ss)", self.consumer_name, self._grace
        )
        if self.health is not None:
            await self.health.stop()
        await asyncio.gather(*(c.stop(self._grace) for c in self.consumers))
        logger.info("worker host %s stopped", self.consumer_name)

    async def run(self) -> None:
        """Start, wait for SIGTERM/SIGINT (or `stop`), then drain."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.drain()


async def run_host(
    workers: Sequence[Worker[Any]],
    *,
    nats_url: str | None = None,
    redis_url: str | None = None,
    namespace: str | None = None,
    grace: float = DEFAULT_GRACE,
    health: tuple[str, int] | None = None,
) -> None:
    """Connect and run `workers` until SIGTERM or SIGINT arrives, then drain.

    Meant for a process that is a worker host and nothing else (`chirp run`): it
    hands what the process holds by now to `gc.freeze`.
    """
    client = Client(
        name="worker-host",
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=namespace,
    )
    async with client:
        # Modules, classes and connections made so far live as long as the process.
        # Frozen, they are left out of the collector's full passes, which a busy
        # host triggers often (every handled message allocates a few objects):
        # about 4% of a drain's CPU time with a no-op handler.
        gc.freeze()
        await WorkerHost(client, workers, grace=grace, health=health).run()
