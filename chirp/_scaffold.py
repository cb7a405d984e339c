"""Project scaffolding: the logic of `chirp init` and `chirp new`.

A project made by `init_project` looks like this (package `shop`)::

    pyproject.toml          depends on chirp; pytest finds src/ and tests/
    README.md               the next steps
    src/shop/__init__.py
    src/shop/proto/         one .proto file per message or operation; `chirp gen src`
    src/shop/operations/    one module per operation; __init__ imports each of them
    src/shop/workers/       one module per worker; __init__ imports each of them, so
                            `chirp run shop.workers --path src` runs them all
    tests/conftest.py       loads the `chirp.testing` fixtures

`new_message`, `new_operation` and `new_worker` add to that layout. Nothing is ever
overwritten: every file to create is checked before the first one is written, and the
only existing files that change are the `__init__` modules that register operations
and workers, by one appended import line.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from chirp._errors import UsageError

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_FIELD = re.compile(r"[a-z][a-z0-9_]*")
_PROTO_MESSAGE = re.compile(
    r"message\s+(?P<cls>\w+)\s*\{\s*option\s*\(chirp\.message\)\s*=\s*\{"
    r"(?P<option>[^}]*)\}"
)


@dataclass(slots=True)
class Scaffold:
    """What a scaffolding command did, and what to run next.

    Attributes:
        created: New files, in the order they were written.
        updated: Existing files that got a line appended.
        next_steps: Shell commands to run next, from the project directory.
    """

    created: list[Path] = field(default_factory=list)
    updated: list[Path] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    files: dict[Path, str] = field(default_factory=dict)
    registrations: dict[Path, tuple[str, str]] = field(default_factory=dict)

    def apply(self) -> Scaffold:
        for path in self.files:
            if path.exists():
                raise UsageError(f"{path} already exists; refusing to overwrite it")
        done = Scaffold()
        for path, content in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            done.created.append(path)
        for path, (header, line) in self.registrations.items():
            if _register(path, header, line):
                done.created.append(path)
            else:
                done.updated.append(path)
        return done


@dataclass(frozen=True, slots=True)
class _Message:
    """A message of the project's protos, as far as the scaffold needs it."""

    cls: str
    module: str
    fields: tuple[tuple[str, str], ...]


def init_project(directory: Path, *, package: str | None = None) -> Scaffold:
    """Start a project in `directory` (created if missing, refused if not empty).

    Args:
        directory: The project directory.
        package: The Python package; the directory's name in snake_case by default.

    Raises:
        UsageError: The directory holds files already, or the package name is not a
            Python identifier.
    """
    package = package or directory.resolve().name.replace("-", "_").lower()
    _check_package(package)
    if directory.is_dir() and any(directory.iterdir()):
        first = sorted(directory.iterdir())[0]
        raise UsageError(f"{directory} is not empty ({first.name}); refusing to init")

    plan = _Plan()
    values = {"package": package, "project": package.replace("_", "-")}
    for relative, template in _PROJECT_FILES.items():
        target = directory / Template(relative).substitute(values)
        plan.files[target] = Template(template).substitute(values)
    done = plan.apply()
    done.next_steps = [
        f"cd {directory}",
        f"chirp new message {package} order-place --param order_id",
        f"chirp new worker {package} order-place",
    ]
    return done


def new_message(
    root: Path, package: str, name: str, *, parameters: list[str] | None = None
) -> Scaffold:
    """Add a message: its proto, with the ``(chirp.message)`` option, and a test.

    Args:
        root: The project directory.
        package: The project's package.
        name: The kebab-case message name, e.g. ``order-place``.
        parameters: Routing parameters; each becomes a string field.

    Raises:
        UsageError: A name is invalid, the package is missing, or a file exists.
    """
    source = _package_dir(root, package)
    _check_name(name)
    fields = _check_fields(parameters or [])
    plan = _Plan()
    message = _plan_message(plan, source, package, name, fields)
    values = _names(package, name) | {"cls": message.cls, "module": message.module}
    values["parameters"] = _tuple_text([name for _, name in fields])
    plan.files[root / "tests" / f"test_message_{values['snake']}.py"] = Template(
        _MESSAGE_TEST
    ).substitute(values)
    done = plan.apply()
    done.next_steps = ["chirp gen src", f"chirp new worker {package} {name}"]
    return done


def new_operation(root: Path, package: str, name: str) -> Scaffold:
    """Add an operation: request and response protos, the module, a test, its import.

    Raises:
        UsageError: A name is invalid, the package is missing, or a file exists.
    """
    source = _package_dir(root, package)
    _check_name(name)
    values = _names(package, name)
    plan = _Plan()
    plan.files[source / "proto" / f"{values['snake']}.proto"] = Template(
        _OPERATION_PROTO
    ).substitute(values)
    plan.files[source / "operations" / f"{values['snake']}.py"] = Template(
        _OPERATION_MODULE
    ).substitute(values)
    plan.files[root / "tests" / f"test_operation_{values['snake']}.py"] = Template(
        _OPERATION_TEST
    ).substitute(values)
    plan.registrations[source / "operations" / "__init__.py"] = (
        f'"""The operations of {package}."""\n',
        _import_line(f"{package}.operations.{values['snake']}", values["snake"]),
    )
    done = plan.apply()
    done.next_steps = ["chirp gen src", "pytest"]
    return done


def new_worker(
    root: Path, package: str, name: str, *, consumes: str | None = None
) -> Scaffold:
    """Add a worker: its module, a test, and its import in the workers package.

    The worker consumes `consumes` (by default the message named like the worker),
    which must be declared in the package's protos, and publishes the completion
    message ``<consumes>-complete``, which is created when missing with the same
    parameters.

    Raises:
        UsageError: A name is invalid, the package or the consumed message is
            missing, or a file exists.
    """
    source = _package_dir(root, package)
    _check_name(name)
    consumes = consumes or name
    _check_name(consumes)
    plan = _Plan()
    consumed = _find_message(source, package, consumes)
    complete = _find_message(source, package, f"{consumes}-complete")
    if complete is None and consumed is not None:
        complete = _plan_message(
            plan, source, package, f"{consumes}-complete", consumed.fields
        )
    if consumed is None or complete is None:
        raise UsageError(
            f"no message {consumes!r} in {source / 'proto'}; add it with "
            f"`chirp new message {package} {consumes}`"
        )

    _plan_worker(plan, root, package, name, consumed, complete)
    done = plan.apply()
    done.next_steps = [
        "chirp gen src",
        "pytest",
        f"chirp dev {package}.workers --path src",
    ]
    return done


def _plan_worker(
    plan: _Plan,
    root: Path,
    package: str,
    name: str,
    consumed: _Message,
    complete: _Message,
) -> None:
    values = _names(package, name) | {
        "consumed": consumed.cls,
        "complete": complete.cls,
        "imports": _imports(consumed, complete),
        "copied": _copied_fields(consumed, complete, "message."),
        "sample": _copied_fields(consumed, consumed, "", sample=True),
        "expected": _copied_fields(consumed, complete, "", sample=True),
    }
    source = root / "src" / package
    plan.files[source / "workers" / f"{values['snake']}.py"] = Template(
        _WORKER_MODULE
    ).substitute(values)
    plan.files[root / "tests" / f"test_worker_{values['snake']}.py"] = Template(
        _WORKER_TEST
    ).substitute(values)
    plan.registrations[source / "workers" / "__init__.py"] = (
        f'"""The workers of {package}: `chirp run {package}.workers` runs them."""\n',
        _import_line(f"{package}.workers.{values['snake']}", values["snake"]),
    )


def _plan_message(
    plan: _Plan,
    source: Path,
    package: str,
    name: str,
    fields: tuple[tuple[str, str], ...],
) -> _Message:
    values = _names(package, name)
    lines = [f"  {kind} {field} = {n};" for n, (kind, field) in enumerate(fields, 1)]
    values["parameters"] = ", ".join(f'"{field}"' for _, field in fields)
    values["fields"] = "\n".join(lines) or "  // Add its fields here."
    plan.files[source / "proto" / f"{values['snake']}.proto"] = Template(
        _MESSAGE_PROTO
    ).substitute(values)
    return _Message(values["cls"], f"{package}.proto.{values['snake']}_pb2", fields)


def _find_message(source: Path, package: str, name: str) -> _Message | None:
    """Find a message by its Chirp name in the package's protos, or None."""
    for proto in sorted((source / "proto").glob("*.proto")):
        text = proto.read_text()
        for match in _PROTO_MESSAGE.finditer(text):
            if re.search(rf'name:\s*"{re.escape(name)}"', match["option"]):
                fields = _fields_of(text, match["cls"], match["option"])
                module = f"{package}.proto.{proto.stem}_pb2"
                return _Message(match["cls"], module, fields)
    return None


def _fields_of(text: str, cls: str, option: str) -> tuple[tuple[str, str], ...]:
    """Return (type, name) of each routing parameter, read from the proto text."""
    listed = re.search(r"parameters:\s*\[([^\]]*)\]", option)
    names = re.findall(r'"(\w+)"', listed[1]) if listed else []
    body = text[text.index(f"message {cls}") :]
    found: list[tuple[str, str]] = []
    for parameter in names:
        declared = re.search(rf"\n\s*(\w+)\s+{parameter}\s*=", body)
        found.append((declared[1] if declared else "string", parameter))
    return tuple(found)


def _copied_fields(
    source: _Message, target: _Message, prefix: str, *, sample: bool = False
) -> str:
    """Return keyword arguments setting the fields `target` shares with `source`."""
    shared = [f for f in source.fields if f in target.fields]
    if sample:
        return ", ".join(f"{name}={_sample(kind)}" for kind, name in shared)
    return ", ".join(f"{name}={prefix}{name}" for _, name in shared)


def _imports(*messages: _Message) -> str:
    """Return the import lines of some message classes, as isort orders them."""
    by_module: dict[str, set[str]] = {}
    for message in messages:
        by_module.setdefault(message.module, set()).add(message.cls)
    return "\n".join(
        f"from {module} import {', '.join(sorted(names))}"
        for module, names in sorted(by_module.items())
    )


def _tuple_text(names: list[str]) -> str:
    """Return a tuple of strings as ruff would format it."""
    items = ", ".join(f'"{name}"' for name in names)
    return f"({items},)" if len(names) == 1 else f"({items})"


def _sample(kind: str) -> str:
    if kind == "string":
        return '"test"'
    return "True" if kind == "bool" else "7"


def _register(path: Path, header: str, line: str) -> bool:
    """Append an import line to a registering module; return whether it is new."""
    created = not path.exists()
    text = header if created else path.read_text()
    if line in text.splitlines():
        return created
    if text and not text.endswith("\n"):
        text += "\n"
    if created or not re.search(r"^from ", text, re.MULTILINE):
        text += "\n"
    lines = text.splitlines(keepends=True)
    start = len(lines)
    while start > 0 and lines[start - 1].startswith("from "):
        start -= 1
    # The imports stay sorted, as ruff's isort wants them.
    imports = sorted([*lines[start:], line + "\n"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines[:start] + imports))
    return created


def _import_line(module: str, name: str) -> str:
    # `x as x` marks a re-export for ruff and mypy.
    return f"from {module} import {name} as {name}"


def _package_dir(root: Path, package: str) -> Path:
    _check_package(package)
    source = root / "src" / package
    if not (source / "__init__.py").is_file():
        raise UsageError(
            f"no package {package!r} at {source}; run this in a project made by "
            "`chirp init`, or pass --root"
        )
    return source


def _check_package(package: str) -> None:
    if not package.isidentifier() or keyword.iskeyword(package) or package == "chirp":
        raise UsageError(f"package name {package!r} must be a Python identifier")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"name {name!r} must be kebab-case, starting with a letter: order-place"
        )


def _check_fields(parameters: list[str]) -> tuple[tuple[str, str], ...]:
    for parameter in parameters:
        if not _FIELD.fullmatch(parameter) or keyword.iskeyword(parameter):
            raise UsageError(f"parameter {parameter!r} must be a snake_case field name")
    if len(set(parameters)) != len(parameters):
        raise UsageError(f"parameters {parameters} list one twice")
    return tuple(("string", p) for p in parameters)


def _names(package: str, name: str) -> dict[str, str]:
    snake = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    return {"package": package, "name": name, "snake": snake, "cls": cls}


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$project"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["chirp"]

[project.optional-dependencies]
dev = ["pytest>=8", "pytest-asyncio>=0.24", "ruff>=0.6", "mypy>=1.11"]

[tool.setuptools.packages.find]
where = ["src"]

[tool.ruff]
line-length = 88
src = ["src"]
extend-exclude = ["*_pb2.py", "*_pb2.pyi"]

[tool.mypy]
strict = true
mypy_path = "src"
files = ["src", "tests"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "session"
asyncio_default_test_loop_scope = "session"
pythonpath = ["src"]
testpaths = ["tests"]
"""

_README = """\
# $project

A system built on Chirp. Messages and operation types are declared in
`src/$package/proto/`, operations live in `src/$package/operations/` and workers in
`src/$package/workers/`.

## Next steps

```sh
chirp new message $package order-place --param order_id   # src/$package/proto/
chirp new worker $package order-place                     # worker, test, registration
chirp new operation $package order-get                    # request, response, operation
chirp gen src                                           # generate *_pb2.py modules
pytest                                                  # embedded servers, no setup
chirp dev $package.workers --path src                     # run the workers locally
chirp map --module $package.workers --module $package.operations --path src
```

`chirp new` never overwrites a file; it prints what it created.
"""

_PROJECT_FILES = {
    "pyproject.toml": _PYPROJECT,
    "README.md": _README,
    ".gitignore": "__pycache__/\n.venv/\n*.egg-info/\n",
    "src/$package/__init__.py": '"""The $project system."""\n',
    "src/$package/proto/__init__.py": (
        '"""Messages and operation types, and the modules `chirp gen src` makes."""\n'
    ),
    "tests/conftest.py": (
        '"""Load the Chirp fixtures: `servers`, `client`, `unique_name`."""\n\n'
        'pytest_plugins = ["chirp.testing"]\n'
    ),
}

_MESSAGE_PROTO = """\
syntax = "proto3";

package $package;

import "chirp/options.proto";

// The `$name` message.
message $cls {
  option (chirp.message) = {name: "$name", parameters: [$parameters]};
$fields
}
"""

_MESSAGE_TEST = """\
\"\"\"The `$name` message.\"\"\"

import chirp

from $module import $cls


def test_${snake}_is_a_chirp_message() -> None:
    spec = chirp.message_spec($cls)

    assert spec.name == "$name"
    assert spec.parameters == $parameters
"""

_OPERATION_PROTO = """\
syntax = "proto3";

package $package;

// Operation `$name`.
message ${cls}Request {
  string text = 1;
}

message ${cls}Response {
  string text = 1;
}
"""

_OPERATION_MODULE = """\
\"\"\"The `$name` operation.\"\"\"

from chirp import Context, operation

from $package.proto.${snake}_pb2 import ${cls}Request, ${cls}Response


@operation(name="$name", timeout=5.0)
async def $snake(ctx: Context, request: ${cls}Request) -> ${cls}Response:
    \"\"\"Answer one `$name` request; for now, with its own text.\"\"\"
    return ${cls}Response(text=request.text)
"""

_OPERATION_TEST = """\
\"\"\"The `$name` operation.\"\"\"

import chirp

from $package.operations.$snake import $snake
from $package.proto.${snake}_pb2 import ${cls}Request, ${cls}Response


async def test_${snake}_answers(client: chirp.Client) -> None:
    response = await $snake(client.context(), ${cls}Request(text="hello"))

    assert response == ${cls}Response(text="hello")
"""

_WORKER_MODULE = """\
\"\"\"The `$name` worker.\"\"\"

from chirp import Context, worker

$imports


@worker(name="$name", publishes=($complete,))
async def $snake(ctx: Context, message: $consumed) -> None:
    \"\"\"Handle one message, then announce that it is complete.

    A worker runs at least once per message: keep what it does idempotent.
    \"\"\"
    ctx.log.info("$name handling attempt %d", ctx.attempt)
    await ctx.msg($complete($copied))
"""

_WORKER_TEST = """\
\"\"\"The `$name` worker, run in-process against the test servers.\"\"\"

import chirp
from chirp.testing import running_workers

$imports
from $package.workers import $snake


async def test_${snake}_completes(client: chirp.Client) -> None:
    ctx = client.context()
    message = $consumed($sample)

    async with running_workers(client, $snake):
        done = await ctx.publish_wait(message, $complete, timeout=10)

    assert done.body == $complete($expected)
"""
