"""Hot reload for `chirp dev --reload`: restart the worker host when sources change.

A `Supervisor` runs the host as a child process (``python -m chirp run ...``) and polls
the modification times of the ``.py`` and ``.proto`` files under some directories. When
one changes, appears or disappears, it stops the child as `chirp run` expects (SIGTERM,
then the grace period, then SIGKILL) and starts a new one. Polling, not inotify: it
needs no dependency and works the same on every platform and file system.

Restarting a process, rather than re-importing modules in place, is what makes the
reload trustworthy: no stale module objects, no half-registered workers. With embedded
servers, `run_dev_with_reload` starts them once in the supervisor, so their data
outlives every restart of the host.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from chirp._config import NATS_URL_VARIABLE, REDIS_URL_VARIABLE
from chirp._embedded import embedded_servers_sync, parent_death_hook

logger = logging.getLogger(__name__)

WATCHED_SUFFIXES = frozenset({".py", ".proto"})
# Directories never worth watching: caches and installed packages.
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})

Snapshot = dict[Path, tuple[int, int]]


def snapshot(directories: Sequence[Path]) -> Snapshot:
    """Return the modification time and size of every watched file below some dirs.

    Hidden directories (``.venv``, ``.git``) and caches are skipped.
    """
    found: Snapshot = {}
    for directory in directories:
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = [
                d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS
            ]
            for name in filenames:
                path = Path(dirpath, name)
                if path.suffix in WATCHED_SUFFIXES:
                    _record(found, path)
    return found


def _record(found: Snapshot, path: Path) -> None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return  # Deleted between listing and stat: the next poll sees it gone.
    found[path] = (status.st_mtime_ns, status.st_size)


def changed(before: Snapshot, after: Snapshot) -> list[Path]:
    """Return the files added, removed or modified between two snapshots, sorted."""
    return sorted(
        path
        for path in before.keys() | after.keys()
        if before.get(path) != after.get(path)
    )


class Supervisor:
    """Run a command as a child process and restart it when watched files change.

    Args:
        command: The child's command line.
        watch: Directories whose ``.py`` and ``.proto`` files to watch.
        interval: Seconds between two polls.
        grace: Seconds the child gets to exit after SIGTERM before SIGKILL.
        env: The child's environment; this process's when None.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        watch: Sequence[Path],
        interval: float = 0.5,
        grace: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._command = list(command)
        self._watch = list(watch)
        self._interval = interval
        self._grace = grace
        self._env = None if env is None else dict(env)
        self._child: subprocess.Popen[bytes] | None = None
        self._exit_reported = False
        self.stopping = threading.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """Return the running child's process id, or None."""
        return None if self._child is None else self._child.pid

    @property
    def running(self) -> bool:
        """Tell whether a child is running now."""
        return self._child is not None and self._child.poll() is None

    def run(self) -> int:
        """Supervise until `stopping` is set; return the last child's exit code.

        A child that exits on its own (a syntax error, say) is not started again
        until a file changes.
        """
        seen = snapshot(self._watch)
        self._start()
        try:
            while not self.stopping.wait(self._interval):
                current = snapshot(self._watch)
                if current != seen:
                    self._restart(changed(seen, current))
                    seen = current
                else:
                    self._report_exit()
        finally:
            code = self._stop()
        return code

    def _start(self) -> None:
        # A session of its own: Ctrl-C reaches the supervisor only, which then
        # stops the child the same way as on a reload. A supervisor killed outright
        # takes the child with it.
        self._child = subprocess.Popen(
            self._command,
            env=self._env,
            start_new_session=True,
            preexec_fn=parent_death_hook(),
        )
        self._exit_reported = False
        logger.info("started worker host (pid %d)", self._child.pid)

    def _restart(self, paths: list[Path]) -> None:
        shown = ", ".join(str(p) for p in paths[:3])
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        logger.info("changed: %s%s; restarting the worker host", shown, more)
        self._stop()
        self._start()
        self.restarts += 1

    def _report_exit(self) -> None:
        if self._child is None or self._exit_reported:
            return
        code = self._child.poll()
        if code is not None:
            self._exit_reported = True
            logger.warning(
                "worker host exited with code %d; waiting for a change", code
            )

    def _stop(self) -> int:
        child, self._child = self._child, None
        if child is None:
            return 0
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(self._grace)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "worker host (pid %d) ignored SIGTERM; killing it", child.pid
                )
                child.kill()
        return child.wait()


def run_command(
    modules: Sequence[str],
    *,
    paths: Sequence[Path] = (),
    grace: float = 5.0,
    nats_url: str,
    redis_url: str,
    namespace: str | None = None,
) -> list[str]:
    """Return the ``python -m chirp run`` command line for the worker host."""
    command = [sys.executable, "-m", "chirp", "run", *modules]
    for path in paths:
        command += ["--path", str(path)]
    command += ["--grace", str(grace), "--nats-url", nats_url, "--redis-url", redis_url]
    if namespace:
        command += ["--namespace", namespace]
    return command


def run_dev_with_reload(
    modules: Sequence[str],
    *,
    paths: Sequence[Path] | None = None,
    grace: float = 5.0,
    nats_url: str | None = None,
    redis_url: str | None = None,
    namespace: str | None = None,
) -> int:
    """Run the workers of `modules`, restarting them whenever a source file changes.

    Watches the `paths` directories, or the current one when there are none. With no
    server URLs, starts embedded servers for as long as this call runs. Returns on
    SIGINT or SIGTERM, after stopping the worker host.

    Returns:
        The worker host's last exit code.
    """
    watch = [Path(p).resolve() for p in paths or [Path.cwd()]]
    if nats_url and redis_url:
        command = run_command(
            modules,
            paths=watch,
            grace=grace,
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=namespace,
        )
        return _supervise(command, watch, grace)

    with embedded_servers_sync() as servers:
        logger.info(
            "embedded servers: %s=%s %s=%s",
            NATS_URL_VARIABLE,
            servers.nats_url,
            REDIS_URL_VARIABLE,
            servers.redis_url,
        )
        command = run_command(
            modules,
            paths=watch,
            grace=grace,
            nats_url=servers.nats_url,
            redis_url=servers.redis_url,
            namespace=namespace,
        )
        return _supervise(command, watch, grace)


def _supervise(command: list[str], watch: list[Path], grace: float) -> int:
    supervisor = Supervisor(command, watch=watch, grace=grace + 5.0)
    with _stop_on_signals(supervisor.stopping):
        return supervisor.run()


@contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """Set `stopping` on SIGINT and SIGTERM for the length of the block."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {
        signum: signal.signal(signum, handle)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
