"""Cheap unique ids for rays and requests.

`uuid.uuid4()` reads the OS random source on every call (about 2 us). Chirp ids only
need to be unique, not unpredictable, so each process draws 64 random bits once and
appends a counter: 32 hex characters, unique across processes, and far cheaper.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count(1)


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(1)


def new_id() -> str:
    """Return a new id: 16 hex characters of process prefix, then a 16-hex counter."""
    return f"{_prefix}{next(_counter):016x}"


_reseed()
# A forked child would otherwise repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)
