"""Log output of the `chirp` command: the library itself never configures logging.

Chirp's records carry structured fields through ``extra=`` with stable names
(`FIELDS`). On a terminal they follow the message as ``key=value``; with
``--log-json`` each record is one JSON object per line, fields included, so a ray can
be followed with ``grep <ray id>`` or any log tool.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Final

from rich.console import Console
from rich.logging import RichHandler

FIELDS: Final = (
    "ray_id",
    "request_id",
    "context",
    "worker",
    "attempt",
    "outcome",
    "code",
)


class _FieldsFormatter(logging.Formatter):
    """The message, then each structured field the record carries."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if hasattr(record, name)
        ]
        return f"{text}  {' '.join(fields)}" if fields else text


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, fields, error."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (name, getattr(record, name)) for name in FIELDS if hasattr(record, name)
        )
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: int, *, as_json: bool, console: Console) -> None:
    """Send log records to stderr: rich text with fields, or JSON lines."""
    handler: logging.Handler
    if as_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
    else:
        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(_FieldsFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
