"""The checks that refuse a message instead of running it: too old, or a loop.

A worker with `max_age` refuses a message published longer ago than that; a worker that
does not allow recursion refuses a message whose trace already passed through it. The
consumer answers a refusal with the worker's failure message, or dead-letters it.
"""

from __future__ import annotations

from typing import Any

from chirp._subscribe import Received
from chirp._worker import Worker

# Codes of Chirp's own refusals (see chirp/errors.toml).
STALE = "CHIRP_STALE_MESSAGE"
RECURSIVE = "CHIRP_RECURSIVE_MESSAGE"
# Longest envelope searched for the worker's name before its trace is walked: about
# where the search (under a nanosecond a byte) costs what walking a short trace does.
PREFILTER_MAX_BYTES = 1024

Refusal = tuple[str, str]


class Refusals:
    """The refusal checks of one worker.

    Attributes:
        possible: False for a worker that allows recursion and sets no max_age, which
            refuses nothing: its consumer skips the checks.
    """

    def __init__(self, worker: Worker[Any]) -> None:
        self._worker = worker
        self.possible = worker.max_age is not None or not worker.allow_recursive
        # A trace hop names its context in plain UTF-8 inside the envelope bytes, so
        # an envelope without these bytes cannot have passed through this worker.
        self._name_bytes = worker.name.encode()

    def check(
        self, data: bytes | None, received: Received[Any], now: float
    ) -> Refusal | None:
        """Return the code and reason to refuse a message with, or None to run it.

        `data` is the envelope as stored, `received` the message decoded from it, and
        `now` the time in epoch seconds.
        """
        worker = self._worker
        if worker.max_age is not None:
            age = now - received.ts / 1000
            if age > worker.max_age:
                return STALE, (
                    f"{received.name} {received.request_id} is {age:.1f}s old, past "
                    f"the {worker.max_age}s max_age of worker {worker.name}"
                )
        if (
            not worker.allow_recursive
            and self._may_have_visited(data)
            and received.visited(worker.name)
        ):
            return RECURSIVE, (
                f"{received.name} {received.request_id} already passed through "
                f"worker {worker.name} on ray {received.ray_id}"
            )
        return None

    def _may_have_visited(self, data: bytes | None) -> bool:
        """Tell whether the envelope bytes could hold a trace hop of this worker.

        Looking for the worker's name in a short envelope is cheaper than walking its
        decoded trace, and most envelopes never passed through the worker. Past
        `PREFILTER_MAX_BYTES` the search costs more than the walk it would save.
        """
        if data is None or len(data) > PREFILTER_MAX_BYTES:
            return True
        return self._name_bytes in data
