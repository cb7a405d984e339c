"""`chirp dev --reload`: the supervisor restarts its child when sources change."""

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from chirp._reload import Supervisor, changed, run_command, snapshot
from chirp.testing import EmbeddedServers

TESTS = Path(__file__).resolve().parent

# The child appends its pid to a file, then waits to be stopped.
RECORD_PID = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); "
RECORD_PID += "time.sleep(60)"


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def touch(path: Path, text: str) -> None:
    """Rewrite a file and move its mtime forward, so coarse clocks see a change."""
    path.write_text(text)
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def supervising(supervisor: Supervisor) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        yield thread
    finally:
        supervisor.stopping.set()
        thread.join(timeout=20)


def test_a_changed_source_file_restarts_the_child(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    touch(source / "workers.py", "first = 1\n")
    pids = tmp_path / "pids"
    command = [sys.executable, "-c", RECORD_PID, str(pids)]
    supervisor = Supervisor(command, watch=[source], interval=0.05, grace=5)

    with supervising(supervisor) as thread:
        wait_for(lambda: pids.is_file() and len(pids.read_text().split()) == 1)
        touch(source / "workers.py", "second = 2\n")
        wait_for(lambda: len(pids.read_text().split()) == 2)
        first, second = (int(pid) for pid in pids.read_text().split())
        assert first != second
        assert not alive(first)
        assert supervisor.pid == second

    assert not thread.is_alive()
    assert not alive(second)
    assert supervisor.restarts == 1


def test_other_files_and_hidden_directories_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".venv").mkdir()
    (tmp_path / "notes.txt").write_text("a")
    before = snapshot([tmp_path])

    touch(tmp_path / "notes.txt", "b")
    touch(tmp_path / ".venv" / "site.py", "x = 1\n")
    touch(tmp_path / "order.proto", 'syntax = "proto3";\n')

    assert changed(before, snapshot([tmp_path])) == [tmp_path / "order.proto"]


def test_the_worker_host_restarts_on_a_change(
    tmp_path: Path, servers: EmbeddedServers, unique_name: str
) -> None:
    module = tmp_path / "reloaded_workers.py"
    touch(module, WORKERS.replace("NAME", unique_name))
    command = run_command(
        ["reloaded_workers"],
        paths=[tmp_path],
        grace=1.0,
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=unique_name,
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    supervisor = Supervisor(command, watch=[tmp_path], interval=0.1, env=env)

    with supervising(supervisor):
        wait_for(lambda: supervisor.pid is not None)
        first = supervisor.pid
        time.sleep(0.5)  # Let the host start, so the restart stops a running one.
        touch(module, WORKERS.replace("NAME", unique_name) + "# edited\n")
        wait_for(lambda: supervisor.pid not in (None, first))
        second = supervisor.pid
        assert first is not None and second is not None
        time.sleep(0.5)
        assert supervisor.running, "the restarted host exited"


WORKERS = """
import chirp
from chirptest.messages_pb2 import Ping


@chirp.worker(name="NAME")
async def reloaded(ctx: chirp.Context, msg: Ping) -> None:
    pass
"""
