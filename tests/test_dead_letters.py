"""Dead letters: listing, showing, replaying and dropping them, in code and the CLI."""

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from chirptest.messages_pb2 import Ping

import chirp
from chirp import Client, Context
from chirp._dead_letters import REPLAY_CONTEXT, DeadLetters
from chirp.testing import EmbeddedServers, running_workers


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _cli(servers: EmbeddedServers, ns: str, *args: str) -> str:
    env = {**os.environ, "CHIRP_REDIS_URL": servers.redis_url}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chirp",
            "dead-letters",
            *args,
            "--namespace",
            ns,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


async def test_dead_letters_are_listed_replayed_and_dropped(
    client: Client, servers: EmbeddedServers, unique_name: str
) -> None:
    broken = True
    handled: list[Context] = []

    @chirp.worker(name=unique_name, backoff=chirp.Backoff(max_attempts=1))
    async def fragile(ctx: Context, msg: Ping) -> None:
        if broken and msg.key != "fine":
            raise RuntimeError(f"cannot take {msg.key}")
        handled.append(ctx)

    published = await client.context().msg(Ping(key="a"))
    await client.context().msg(Ping(key="b"))
    store = DeadLetters(client.redis, client.names, unique_name)
    async with running_workers(client, fragile):
        await _wait_for_letters(store, 2)

    listed = json.loads(_cli(servers, unique_name, "list", unique_name, "--json"))
    assert [row["attempts"] for row in listed] == [1, 1]
    assert "RuntimeError: cannot take a" in listed[0]["reason"]
    assert listed[0]["request_id"] == published.request_id
    shown = json.loads(
        _cli(servers, unique_name, "show", unique_name, listed[1]["dead_id"])
    )
    assert shown["entry_id"] == listed[1]["entry_id"]

    broken = False
    out = _cli(servers, unique_name, "replay", unique_name, listed[0]["dead_id"])
    assert "Replayed 1" in out
    async with running_workers(client, fragile):
        await _wait_for(lambda: len(handled) == 1)
    [ctx] = handled
    assert ctx.request_id == published.request_id
    assert ctx.trace[-1].context_name == REPLAY_CONTEXT

    assert "Dropped 1" in _cli(servers, unique_name, "drop", unique_name, "--all")
    assert await store.oldest() == []


async def _wait_for_letters(store: DeadLetters, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(await store.oldest()) < count:
        assert time.monotonic() < deadline, "dead letters never arrived"
        await asyncio.sleep(0.02)


def test_cli_refuses_ids_together_with_all(servers: EmbeddedServers) -> None:
    env = {**os.environ, "CHIRP_REDIS_URL": servers.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "chirp", "dead-letters", "drop", "w", "1-0", "--all"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "not both" in result.stderr
