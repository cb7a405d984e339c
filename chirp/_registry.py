"""Error codes defined once, as data: ``errors.toml`` files loaded into a `Registry`.

Each package that raises business errors keeps an ``errors.toml`` beside its code, one
table per code::

    [USER_NOT_FOUND]
    status = 404                                  # an int from 400 to 599
    description = "User {user_id} does not exist" # template, plain {name} fields
    placeholders = ["user_id"]                    # the fields, declared
    summary = "The user does not exist"           # optional: used without context

The rule for placeholders: the fields of ``description`` and the ``placeholders`` list
are the same set. A field the list does not declare could never be filled, because
raising checks the context against the list; a declared name the description never uses
would be context silently dropped. ``summary`` has no fields. Raising an error with
exactly the declared keys fills the description; with no context at all it gives the
summary, if there is one. The context becomes the error's metadata.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from chirp._errors import (
    ErrorContextMismatch,
    InvalidErrorDefinition,
    InvariantViolated,
    OperationError,
    UnknownErrorCode,
)

T = TypeVar("T")

FILE_NAME = "errors.toml"

_CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
_PLACEHOLDER = re.compile(r"[a-z][a-z0-9_]*")
_KEYS = frozenset({"status", "description", "placeholders", "summary"})


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One error code of a registry, as its ``errors.toml`` entry defines it.

    Attributes:
        code: Upper-snake-case name, e.g. ``USER_NOT_FOUND``.
        status: HTTP status, 400 to 599.
        description: Template with ``{name}`` placeholders.
        placeholders: The names the template uses, in declared order.
        summary: Description without context, if the entry gives one.
        source: The file that defines the code.
    """

    code: str
    status: int
    description: str
    placeholders: tuple[str, ...]
    summary: str | None
    source: str

    def describe(self, context: Mapping[str, object]) -> str:
        """Return the description filled with `context`, or the summary without one.

        Raises:
            ErrorContextMismatch: `context` lacks a placeholder or has an extra key.
        """
        self.check(context)
        if not context and self.placeholders and self.summary is not None:
            return self.summary
        return self.description.format_map(context)

    def check(self, context: Mapping[str, object]) -> None:
        """Check that `context` can describe this error; see `describe`.

        Raises:
            ErrorContextMismatch: `context` lacks a placeholder or has an extra key.
        """
        if not context and self.summary is not None:
            return
        missing = [name for name in self.placeholders if name not in context]
        unexpected = sorted(set(context) - set(self.placeholders))
        if missing or unexpected:
            raise ErrorContextMismatch(
                self.code, missing=missing, unexpected=unexpected
            )


class Registry:
    """The error codes a system raises and answers with, loaded from ``errors.toml``.

    Make one with `load`. Its helpers raise `OperationError` with the code's status and
    filled description: `error` builds one, `bail` raises it, `ensure` raises it unless
    a condition holds and `unwrap` raises it for ``None``.
    """

    def __init__(self, codes: Iterable[ErrorCode] = ()) -> None:
        self._codes: dict[str, ErrorCode] = {}
        for code in codes:
            self._add(code)

    @classmethod
    def load(cls, *sources: str | Path, builtin: bool = True) -> Registry:
        """Load the ``errors.toml`` of each source into one registry.

        Args:
            sources: A `Path` is a file, or a directory holding ``errors.toml``; a
                `str` is the name of a package holding ``errors.toml``.
            builtin: Include Chirp's own codes (``CHIRP_TIMEOUT`` and the rest).

        Raises:
            InvalidErrorDefinition: A file is missing or unreadable, or breaks a rule of
                the format, or defines a code another source defines too.
        """
        registry = cls(builtin_codes() if builtin else ())
        for source in sources:
            label, text = _read(source)
            for code in parse_definitions(text, source=label):
                registry._add(code)
        return registry

    def __contains__(self, code: object) -> bool:
        return code in self._codes

    def __iter__(self) -> Iterator[ErrorCode]:
        return iter(sorted(self._codes.values(), key=lambda entry: entry.code))

    def __len__(self) -> int:
        return len(self._codes)

    def get(self, code: str) -> ErrorCode:
        """Return the definition of `code`.

        Raises:
            UnknownErrorCode: No loaded file defines it.
        """
        try:
            return self._codes[code]
        except KeyError:
            raise UnknownErrorCode(code) from None

    def error(self, code: str, /, **context: object) -> OperationError:
        """Return the `OperationError` of `code`, described with `context`.

        The context also becomes the error's metadata, so its values should be
        JSON-serialisable.

        Raises:
            UnknownErrorCode: No loaded file defines `code`.
            ErrorContextMismatch: `context` does not match the code's placeholders.
        """
        entry = self.get(code)
        message = entry.describe(context)
        return OperationError(code, message, status=entry.status, metadata=context)

    def bail(self, code: str, /, **context: object) -> NoReturn:
        """Raise the `OperationError` of `code`, described with `context`."""
        raise self.error(code, **context)

    def ensure(self, condition: object, code: str, /, **context: object) -> None:
        """Raise the `OperationError` of `code` unless `condition` is true.

        The context is checked against the code even when the condition holds, so a
        wrong key shows up the first time the line runs, not the first time it fails.
        """
        self.get(code).check(context)
        if not condition:
            raise self.error(code, **context)

    def unwrap(self, value: T | None, code: str, /, **context: object) -> T:
        """Return `value`, or raise the `OperationError` of `code` if it is ``None``."""
        self.get(code).check(context)
        if value is None:
            raise self.error(code, **context)
        return value

    def reference(self) -> str:
        """Return the codes as a Markdown reference: code, status and description.

        Each code carries an anchor of its lower-case name, the fragment `api_error`
        links documentation to.
        """
        lines = [
            "# Error codes",
            "",
            "| code | status | description |",
            "|---|---|---|",
        ]
        lines += [_reference_row(entry) for entry in self]
        return "\n".join(lines) + "\n"

    def _add(self, code: ErrorCode) -> None:
        known = self._codes.get(code.code)
        if known is not None:
            raise InvalidErrorDefinition(
                f"already defined in {known.source}", source=code.source, code=code.code
            )
        self._codes[code.code] = code


def _reference_row(entry: ErrorCode) -> str:
    anchor = f'<a id="{entry.code.lower()}"></a>`{entry.code}`'
    description = _markdown_cell(entry.description)
    if entry.summary is not None:
        description += f" (without context: {_markdown_cell(entry.summary)})"
    return f"| {anchor} | {entry.status} | {description} |"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


@functools.cache
def builtin_codes() -> tuple[ErrorCode, ...]:
    """Return Chirp's own codes, from the ``errors.toml`` shipped in the package."""
    label, text = _read("chirp")
    return tuple(parse_definitions(text, source=label))


def _read(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path):
        path = source / FILE_NAME if source.is_dir() else source
        label = str(path)
        try:
            return label, path.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidErrorDefinition(
                f"cannot be read: {error.strerror}", source=label
            ) from error
    try:
        resource = resources.files(source) / FILE_NAME
        return str(resource), resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, OSError) as error:
        raise InvalidErrorDefinition(
            f"no {FILE_NAME} in package {source!r} (pass a Path for a file): {error}",
            source=source,
        ) from error


def parse_definitions(text: str, *, source: str) -> list[ErrorCode]:
    """Parse the text of one ``errors.toml`` file into its codes.

    Args:
        text: The file's content.
        source: The file's name, for the messages of errors.

    Raises:
        InvalidErrorDefinition: The text is not TOML or breaks a rule of the format.
    """
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidErrorDefinition(
            f"not valid TOML: {error}", source=source
        ) from None
    return [_entry(code, table, source) for code, table in tables.items()]


def _entry(code: str, table: Any, source: str) -> ErrorCode:
    def invalid(problem: str) -> InvalidErrorDefinition:
        return InvalidErrorDefinition(problem, source=source, code=code)

    if not _CODE.fullmatch(code):
        raise invalid("a code is upper snake case, like USER_NOT_FOUND")
    if not isinstance(table, dict):
        raise invalid("an error code is a table with a status and a description")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise invalid(f"unknown key(s) {', '.join(unknown)}")

    status = _status(table.get("status"), invalid)
    placeholders = _placeholders(table.get("placeholders", []), invalid)
    description = _description(table.get("description"), placeholders, invalid)
    summary = _summary(table.get("summary"), invalid)
    return ErrorCode(code, status, description, placeholders, summary, source)


# How the checks of one entry make their error: problem -> error naming file and code.
_Invalid = Callable[[str], InvalidErrorDefinition]


def _status(value: object, invalid: _Invalid) -> int:
    # bool is an int to Python, but `status = true` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"status must be an int from 400 to 599, got {value!r}")
    if not 400 <= value <= 599:
        raise invalid(f"status must be from 400 to 599, got {value}")
    return value


def _placeholders(value: object, invalid: _Invalid) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise invalid("placeholders must be a list of names")
    bad = [name for name in value if not _PLACEHOLDER.fullmatch(name)]
    if bad:
        raise invalid(f"placeholder names are lower snake case, got {bad}")
    if len(set(value)) != len(value):
        raise invalid(f"placeholders {value} name one twice")
    return tuple(value)


def _description(
    value: object, placeholders: tuple[str, ...], invalid: _Invalid
) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("description must be a non-empty string")
    fields = _fields(value, invalid)
    undeclared = [name for name in fields if name not in placeholders]
    if undeclared:
        raise invalid(
            f"description uses {{{undeclared[0]}}}, which placeholders does not "
            "declare, so it would never be filled"
        )
    unused = [name for name in placeholders if name not in fields]
    if unused:
        raise invalid(
            f"placeholder {unused[0]} is declared but description never uses it"
        )
    return value


def _summary(value: object, invalid: _Invalid) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid("summary must be a non-empty string")
    if _fields(value, invalid):
        raise invalid("summary is used without context, so it has no placeholders")
    return value


def _fields(template: str, invalid: _Invalid) -> list[str]:
    """Return the ``{name}`` fields of `template`, refusing any other field syntax."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise invalid(f"{template!r} is not a valid template: {error}") from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion or not _PLACEHOLDER.fullmatch(field):
            raise invalid(f"{template!r} may only use plain {{name}} placeholders")
        fields.append(field)
    return fields


_default: Registry | None = None


def default_registry() -> Registry:
    """Return the registry `bail`, `ensure`, `unwrap` and `api_error` use by default.

    Until `use_registry` installs another, it holds Chirp's own codes only.
    """
    global _default
    if _default is None:
        _default = Registry(builtin_codes())
    return _default


def use_registry(registry: Registry) -> Registry:
    """Make `registry` the default one; return the one it replaces."""
    global _default
    previous = default_registry()
    _default = registry
    return previous


def error(code: str, /, **context: object) -> OperationError:
    """Return the `OperationError` of `code` from the default registry.

    See `Registry.error`.
    """
    return default_registry().error(code, **context)


def bail(code: str, /, **context: object) -> NoReturn:
    """Raise the `OperationError` of `code` from the default registry.

    Raises:
        OperationError: Always, with the code's status and filled description.
        UnknownErrorCode: The default registry does not define `code`.
        ErrorContextMismatch: `context` does not match the code's placeholders.
    """
    default_registry().bail(code, **context)


def ensure(condition: object, code: str, /, **context: object) -> None:
    """Raise the `OperationError` of `code` unless `condition` is true.

    Uses the default registry; see `Registry.ensure`.
    """
    default_registry().ensure(condition, code, **context)


def unwrap(value: T | None, code: str, /, **context: object) -> T:
    """Return `value`, or raise the `OperationError` of `code` if it is ``None``.

    Uses the default registry; see `Registry.unwrap`.
    """
    return default_registry().unwrap(value, code, **context)


def internal_assert(condition: object, description: str) -> None:
    """Raise `InvariantViolated` at the caller's file and line unless `condition` holds.

    For facts the code relies on, not for business rules: the caller of an operation
    sees it as `InternalError`, and the API edge as a 500.

    Raises:
        InvariantViolated: `condition` is false.
    """
    if condition:
        return

    # One frame up is the caller: the line that states the invariant.
    caller = sys._getframe(1)
    location = f"{caller.f_code.co_filename}:{caller.f_lineno}"
    raise InvariantViolated(description, location=location)
