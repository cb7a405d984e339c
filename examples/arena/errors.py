"""The arena's error codes: every package's ``errors.toml``, in one registry.

Operations raise through it, workers describe their failure messages with it and the
gateway answers with it. ``chirp errors examples/arena examples/arena/user
examples/arena/notify`` prints the reference.
"""

from __future__ import annotations

from chirp import Registry

registry = Registry.load("arena", "arena.user", "arena.notify")
