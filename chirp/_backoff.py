"""How long a worker waits before retrying a message: exponential, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from chirp._errors import UsageError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry policy of a worker.

    The delay before attempt ``n + 1`` is drawn uniformly from
    ``[0, min(cap, base * 2 ** (n - 1))]`` ("full jitter"), so retries of many failed
    messages spread out instead of arriving together.

    Attributes:
        base: Seconds of the first ceiling.
        cap: Largest ceiling, in seconds.
        max_attempts: Attempts before the message is dead-lettered; None never gives up.
        rng: Source of the jitter; pass a seeded `random.Random` for repeatable tests.
    """

    base: float = 0.5
    cap: float = 300.0
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise UsageError(
                f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise UsageError(
                f"max_attempts must be at least 1, got {self.max_attempts}"
            )

    def ceiling(self, failed_attempts: int) -> float:
        """Return the largest delay after `failed_attempts` failures (from 1)."""
        exponent = min(failed_attempts - 1, 62)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, failed_attempts: int) -> float:
        """Return a jittered delay in seconds after `failed_attempts` failures."""
        return self.rng.uniform(0.0, self.ceiling(failed_attempts))

    def gives_up_after(self, failed_attempts: int) -> bool:
        """Tell whether the message is dead-lettered after this many failures."""
        return self.max_attempts is not None and failed_attempts >= self.max_attempts
