"""Operations: typed in-process calls with a child context, deadline and errors."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar, overload

from google.protobuf.message import Message

from chirp._context import Context
from chirp._deadline import watch
from chirp._errors import (
    ChirpError,
    ChirpTimeoutError,
    InternalError,
    OperationError,
    UsageError,
)
from chirp._metrics import OPERATION_CALLS, OPERATION_SECONDS, counter, histogram
from chirp._schema import message_spec
from chirp._tracing import active as tracing_active
from chirp._tracing import call_span

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

Handler = Callable[[Context, Req], Awaitable[Resp]]

DEFAULT_TIMEOUT = 60.0

# One line per call, at INFO, shared with the workers' line per handled message.
handled_logger = logging.getLogger("chirp.handled")


class Operation(Generic[Req, Resp]):
    """An async function callable as an operation: ``await op(ctx, request)``.

    Made by `operation`. The call checks the request type, runs the function with a
    child context under the operation's deadline, and lets Chirp errors through;
    anything else becomes `InternalError`.

    `publishes` (message classes) and `calls` (other operations) are what the function
    declares it publishes and calls, for `chirp map`; they are not enforced.
    """

    def __init__(
        self,
        fn: Handler[Req, Resp],
        *,
        name: str,
        request_type: type[Req],
        response_type: type[Resp],
        timeout: float,
        publishes: Iterable[type[Message]] = (),
        calls: Iterable[Operation[Any, Any]] = (),
    ) -> None:
        self.fn = fn
        self.name = name
        self.request_type = request_type
        self.response_type = response_type
        self.timeout = timeout
        self.publishes = tuple(publishes)
        self.calls = tuple(calls)
        _check_declared(name, self.publishes, self.calls)
        self._calls_ok = counter(OPERATION_CALLS, name, "OK")
        self._seconds = histogram(OPERATION_SECONDS, name)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Operation {self.name}>"

    async def __call__(self, ctx: Context, request: Req) -> Resp:
        """Call the operation on behalf of `ctx`.

        Raises:
            UsageError: `request` is not of the operation's request type.
            ChirpTimeoutError: The deadline passed.
            InternalError: The function raised something that is not a Chirp error, or
                returned the wrong type.
        """
        if type(request) is not self.request_type:
            raise UsageError(
                f"operation {self.name!r} takes {self.request_type.__name__}, "
                f"got {type(request).__name__}"
            )
        if tracing_active():
            with call_span(self.name, ctx.ray_id):
                return await self._call(ctx, request)
        return await self._call(ctx, request)

    async def _call(self, ctx: Context, request: Req) -> Resp:
        child = ctx.child(self.name, timeout=self.timeout)
        assert child.deadline is not None
        deadline = watch(child.deadline)
        started = time.perf_counter()
        try:
            response = await self.fn(child, request)
        except ChirpError as error:
            self._failed(child, error, started)
            raise
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.task.uncancel()
            timeout = ChirpTimeoutError(
                f"operation {self.name!r} missed its deadline "
                f"(timeout {self.timeout}s, ray {ctx.ray_id})"
            )
            self._failed(child, timeout, started)
            raise timeout from None
        except Exception as error:
            internal = self._internal(child, error)
            self._failed(child, internal, started)
            raise internal from error
        finally:
            deadline.release()
        took = time.perf_counter() - started
        self._seconds.observe(took)
        self._calls_ok.inc()
        if handled_logger.isEnabledFor(logging.INFO):
            _log_call(child, "OK", took)
        if type(response) is not self.response_type:
            raise InternalError(
                f"operation {self.name!r} returned {type(response).__name__}, "
                f"not {self.response_type.__name__} (ray {ctx.ray_id})",
                ray_id=ctx.ray_id,
            )
        return response

    def _failed(self, child: Context, error: ChirpError, started: float) -> None:
        took = time.perf_counter() - started
        code = error_code(error)
        self._seconds.observe(took)
        counter(OPERATION_CALLS, self.name, code).inc()
        if handled_logger.isEnabledFor(logging.INFO):
            _log_call(child, code, took)

    def _internal(self, child: Context, error: BaseException) -> InternalError:
        return InternalError(
            f"operation {self.name!r} failed: {type(error).__name__}: {error} "
            f"(ray {child.ray_id})",
            ray_id=child.ray_id,
        )


@overload
def operation(fn: Handler[Req, Resp], /) -> Operation[Req, Resp]: ...


@overload
def operation(
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    publishes: Iterable[type[Message]] = (),
    calls: Iterable[Operation[Any, Any]] = (),
) -> Callable[[Handler[Req, Resp]], Operation[Req, Resp]]: ...


def operation(
    fn: Handler[Req, Resp] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    publishes: Iterable[type[Message]] = (),
    calls: Iterable[Operation[Any, Any]] = (),
) -> Operation[Req, Resp] | Callable[[Handler[Req, Resp]], Operation[Req, Resp]]:
    """Declare an async function ``(ctx, request) -> response`` as an operation.

    Use it bare (``@operation``) or with options
    (``@operation(name="user-get", timeout=5)``). The request and response types come
    from the annotations; the name defaults to the function name in kebab-case.
    `publishes` and `calls` declare the messages it publishes and the operations it
    calls, for `chirp map`.

    Raises:
        UsageError: The function is not async or its annotations are not Protobuf types,
            or `calls` holds something that is not an operation.
        SchemaError: A class in `publishes` is not a Chirp message.
    """

    def wrap(f: Handler[Req, Resp]) -> Operation[Req, Resp]:
        request_type, response_type = _types_of(f)
        return Operation(
            f,
            name=name or f.__name__.replace("_", "-"),
            request_type=request_type,
            response_type=response_type,
            timeout=timeout,
            publishes=publishes,
            calls=calls,
        )

    return wrap if fn is None else wrap(fn)


def _check_declared(
    name: str, publishes: Iterable[type[Message]], calls: Iterable[object]
) -> None:
    for cls in publishes:
        message_spec(cls)
    for called in calls:
        if not isinstance(called, Operation):
            raise UsageError(
                f"operation {name!r} declares it calls {called!r}, not an operation"
            )


def _log_call(ctx: Context, outcome: str, took: float) -> None:
    handled_logger.info(
        "operation %s: %s in %.2fms",
        ctx.name,
        outcome,
        took * 1000,
        extra={
            "ray_id": ctx.ray_id,
            "request_id": ctx.request_id,
            "context": ctx.name,
            "outcome": outcome,
        },
    )


def error_code(error: ChirpError) -> str:
    """Return the code an error counts under in metrics and logs."""
    if isinstance(error, OperationError):
        return error.code
    if isinstance(error, ChirpTimeoutError):
        return "CHIRP_TIMEOUT"
    return "CHIRP_INTERNAL"


def _types_of(fn: Callable[..., Any]) -> tuple[Any, Any]:
    if not inspect.iscoroutinefunction(fn):
        raise UsageError(f"operation {fn.__qualname__} must be an async function")
    hints = typing.get_type_hints(fn)
    parameters = list(inspect.signature(fn).parameters)
    if len(parameters) != 2:
        raise UsageError(
            f"operation {fn.__qualname__} must take (ctx, request), "
            f"it takes {parameters}"
        )
    request_type = hints.get(parameters[1])
    response_type = hints.get("return")
    for role, cls in (("request", request_type), ("response", response_type)):
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise UsageError(
                f"operation {fn.__qualname__} must annotate its {role} with a "
                f"generated Protobuf class, found {cls!r}"
            )
    return request_type, response_type
