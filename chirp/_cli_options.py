"""Options that several `chirp` commands share, declared once."""

from pathlib import Path
from typing import Annotated

import typer

from chirp._config import NAMESPACE_VARIABLE, NATS_URL_VARIABLE, REDIS_URL_VARIABLE

NatsUrl = Annotated[
    str | None, typer.Option(envvar=NATS_URL_VARIABLE, help="NATS server URL.")
]
RedisUrl = Annotated[
    str | None, typer.Option(envvar=REDIS_URL_VARIABLE, help="Redis server URL.")
]
Namespace = Annotated[
    str | None,
    typer.Option(
        envvar=NAMESPACE_VARIABLE, help="Prefix of every subject and key (kebab-case)."
    ),
]
Paths = Annotated[
    list[Path] | None,
    typer.Option(
        "--path",
        help="Directory to import modules from (repeatable); the current one always.",
        exists=True,
        file_okay=False,
    ),
]
