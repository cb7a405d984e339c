"""Workers: async handlers that consume one message through a Redis consumer group."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from google.protobuf.message import Message

from chirp._backoff import Backoff
from chirp._context import Context
from chirp._errors import SchemaError, UsageError
from chirp._schema import MessageSpec, message_spec

if TYPE_CHECKING:
    from chirp._operation import Operation

M = TypeVar("M", bound=Message)

WorkerHandler = Callable[[Context, M], Awaitable[None]]

_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class Worker(Generic[M]):
    """A message handler and how it consumes: made by `worker`.

    Attributes:
        name: The consumer group; every worker name gets every message once.
        spec: The message it consumes.
        concurrency: Handlers running at once in one host.
        batch: Most entries read from the stream at once.
        lease: Seconds an entry stays claimed by a host without renewal; a crashed
            host's entries are taken over after this long.
        backoff: Retry policy for handlers that raise.
        idempotency_window: Seconds a completed idempotency key is remembered.
        failure: The message that reports a business failure of this worker; Chirp
            publishes it for the conditions below, filling the fields it shares with
            the consumed message, and `code` and `message` when it has them.
        max_age: Seconds after its publication a message is too old to handle: it
            is answered with `failure` (code ``CHIRP_STALE_MESSAGE``) instead.
        allow_recursive: Handle messages whose trace already passed through this
            worker; by default they are answered with ``CHIRP_RECURSIVE_MESSAGE``.
        publishes: The message classes the handler declares it publishes, for
            `chirp map`; declared, not enforced.
        calls: The operations the handler declares it calls, for `chirp map`.
    """

    def __init__(
        self,
        fn: WorkerHandler[M],
        *,
        name: str,
        spec: MessageSpec[M],
        concurrency: int,
        batch: int,
        lease: float,
        backoff: Backoff,
        idempotency_window: float = 3600.0,
        failure: type[Message] | None = None,
        max_age: float | None = None,
        allow_recursive: bool = False,
        publishes: Iterable[type[Message]] = (),
        calls: Iterable[Operation[Any, Any]] = (),
    ) -> None:
        if not _NAME.fullmatch(name):
            raise UsageError(f"worker name {name!r} must be kebab-case")
        if concurrency < 1 or batch < 1 or lease <= 0 or idempotency_window <= 0:
            raise UsageError(
                f"worker {name!r} needs concurrency >= 1, batch >= 1, lease > 0 "
                "and idempotency_window > 0"
            )
        self.fn = fn
        self.name = name
        self.spec = spec
        self.concurrency = concurrency
        self.batch = batch
        self.lease = lease
        self.backoff = backoff
        self.idempotency_window = idempotency_window
        self.failure = None if failure is None else message_spec(failure)
        self.max_age = max_age
        self.allow_recursive = allow_recursive
        self.publishes = _declared_messages(name, publishes)
        self.calls = tuple(calls)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Worker {self.name} on {self.spec.name}>"

    async def __call__(self, ctx: Context, message: M) -> None:
        """Run the handler directly, as a plain function (for unit tests)."""
        await self.fn(ctx, message)


@overload
def worker(fn: WorkerHandler[M], /) -> Worker[M]: ...


@overload
def worker(
    *,
    name: str | None = None,
    concurrency: int = 16,
    batch: int = 64,
    lease: float = 30.0,
    backoff: Backoff | None = None,
    idempotency_window: float = 3600.0,
    failure: type[Message] | None = None,
    max_age: float | None = None,
    allow_recursive: bool = False,
    publishes: Iterable[type[Message]] = (),
    calls: Iterable[Operation[Any, Any]] = (),
) -> Callable[[WorkerHandler[M]], Worker[M]]: ...


def worker(
    fn: WorkerHandler[M] | None = None,
    /,
    *,
    name: str | None = None,
    concurrency: int = 16,
    batch: int = 64,
    lease: float = 30.0,
    backoff: Backoff | None = None,
    idempotency_window: float = 3600.0,
    failure: type[Message] | None = None,
    max_age: float | None = None,
    allow_recursive: bool = False,
    publishes: Iterable[type[Message]] = (),
    calls: Iterable[Operation[Any, Any]] = (),
) -> Worker[M] | Callable[[WorkerHandler[M]], Worker[M]]:
    """Declare an async function ``(ctx, message) -> None`` as a worker.

    The consumed message comes from the annotation of the second parameter. The name
    defaults to the function name in kebab-case. A worker cannot fail: if it raises,
    the message is retried with `backoff` (by default forever). A message with an
    idempotency key is completed at most once per key within `idempotency_window`
    seconds, even when it is delivered or published more than once. `publishes`
    declares the message classes the handler publishes, for `chirp map`.

    Raises:
        UsageError: The function is not async, or its message is not a Chirp message.
        SchemaError: A class in `publishes` is not a Chirp message.
    """

    def wrap(f: WorkerHandler[M]) -> Worker[M]:
        return Worker(
            f,
            name=name or f.__name__.replace("_", "-"),
            spec=message_spec(_message_type(f)),
            concurrency=concurrency,
            batch=batch,
            lease=lease,
            backoff=backoff or Backoff(),
            idempotency_window=idempotency_window,
            failure=failure,
            max_age=max_age,
            allow_recursive=allow_recursive,
            publishes=publishes,
            calls=calls,
        )

    return wrap if fn is None else wrap(fn)


def _message_type(fn: Callable[..., Any]) -> Any:
    if not inspect.iscoroutinefunction(fn):
        raise UsageError(f"worker {fn.__qualname__} must be an async function")
    parameters = list(inspect.signature(fn).parameters)
    if len(parameters) != 2:
        raise UsageError(
            f"worker {fn.__qualname__} must take (ctx, message), it takes {parameters}"
        )
    message = typing.get_type_hints(fn).get(parameters[1])
    if not (isinstance(message, type) and issubclass(message, Message)):
        raise UsageError(
            f"worker {fn.__qualname__} must annotate its message with a generated "
            f"Protobuf class, found {message!r}"
        )
    return message


def _declared_messages(
    owner: str, classes: Iterable[type[Message]]
) -> tuple[type[Message], ...]:
    """Check that each declared class is a Chirp message; keep them in order."""
    declared = tuple(classes)
    for cls in declared:
        try:
            message_spec(cls)
        except SchemaError as error:
            raise SchemaError(f"{owner!r} declares it publishes {error}") from error
    return declared


def workers_in(module: object) -> list[Worker[Any]]:
    """Return the workers defined at the top level of a module, in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Worker)]
