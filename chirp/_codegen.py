"""Compile .proto files into Python modules and mypy stubs: the logic of `chirp gen`.

protoc comes from grpcio-tools and runs in a subprocess, so its error messages can be
captured; the stubs come from mypy-protobuf's `protoc-gen-mypy` plugin, passed to protoc
by path so that `PATH` does not matter. User protos may `import "chirp/options.proto"`:
the directory that contains the `chirp` package is always on the include path.

Generation always writes into a temporary directory first. `check` compares that with
the files in place, so CI can tell that committed code is current without touching it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    FieldDescriptorProto,
    FileDescriptorSet,
)

from chirp import options_pb2
from chirp._embedded import installed_executable
from chirp._errors import SchemaError, UsageError
from chirp._schema import check_declaration

_log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
# The directory that contains `chirp/`, where "chirp/options.proto" resolves.
_PACKAGE_PARENT = _PACKAGE_DIR.parent
_OWN_PROTOS = ("chirp/options.proto", "chirp/envelope.proto")
# Directories that hold other people's protos (virtual environments, caches).
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})


class CodegenError(UsageError):
    """protoc rejected a .proto file, a tool is missing, or generated code is stale.

    Attributes:
        files: The stale or missing generated files, when that is the failure.
    """

    def __init__(self, message: str, *, files: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.files = tuple(files)


def generate(root: Path, *, out: Path | None = None, check: bool = False) -> list[Path]:
    """Compile every .proto file below `root` into `*_pb2.py` modules and stubs.

    `root` is the include root: a file at `root/shop/order.proto` is imported by other
    protos as "shop/order.proto" and becomes the module `shop.order_pb2`. Chirp's own
    protos are never regenerated, even when `root` contains them.

    Args:
        root: The include root to search for .proto files.
        out: Where generated files go, mirroring their protos; `root` when None.
        check: Write nothing; raise if any file in `out` differs from what would be
            generated.

    Returns:
        The paths of the generated files inside `out`, sorted.

    Raises:
        CodegenError: protoc failed (the message carries its diagnostics), or with
            `check`, some generated files are stale or missing.
    """
    root = root.resolve()
    if not root.is_dir():
        raise CodegenError(f"proto root {root} is not a directory")
    if root.is_relative_to(_PACKAGE_DIR):
        raise CodegenError(
            f"{root} is inside the chirp package, whose protos are generated "
            "by generate_chirp()"
        )

    protos = find_protos(root)
    target = root if out is None else out.resolve()
    return _generate(root, protos, out=target, check=check)


def generate_chirp(*, check: bool = False) -> list[Path]:
    """Regenerate Chirp's own `options_pb2` and `envelope_pb2` modules and stubs.

    Args:
        check: Write nothing; raise if the committed files are stale.

    Returns:
        The paths of the generated files, sorted.

    Raises:
        CodegenError: protoc failed, or with `check`, some files are stale.
    """
    return _generate(
        _PACKAGE_PARENT, list(_OWN_PROTOS), out=_PACKAGE_PARENT, check=check
    )


def find_protos(root: Path) -> list[str]:
    """List the .proto files below `root` as sorted paths relative to it.

    Hidden directories, `site-packages`, `node_modules` and Chirp's own package
    directory are skipped.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        dirnames[:] = [name for name in dirnames if _searchable(current / name)]
        found.extend(
            (current / name).relative_to(root).as_posix()
            for name in filenames
            if name.endswith(".proto")
        )
    return sorted(found)


def _searchable(directory: Path) -> bool:
    name = directory.name
    if name.startswith(".") or name in _SKIPPED_DIRS:
        return False
    return directory.resolve() != _PACKAGE_DIR


def _generate(
    root: Path, protos: Sequence[str], *, out: Path, check: bool
) -> list[Path]:
    if not protos:
        return []

    with tempfile.TemporaryDirectory(prefix="chirp-gen-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        descriptors = Path(tmp) / "descriptors.pb"
        _run_protoc(root, protos, staging, descriptors)
        _check_declarations(descriptors)
        produced = sorted(
            path.relative_to(staging) for path in staging.rglob("*") if path.is_file()
        )
        if check:
            _compare(staging, produced, out)
        else:
            _install(staging, produced, out)

    return [out / relative for relative in produced]


def _run_protoc(
    root: Path, protos: Sequence[str], staging: Path, descriptors: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        *(f"--proto_path={path}" for path in _include_paths(root)),
        f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
        f"--python_out={staging}",
        f"--mypy_out={staging}",
        f"--descriptor_set_out={descriptors}",
        *protos,
    ]
    _log.debug("running %s", command)
    result = subprocess.run(
        command, cwd=root, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = result.stderr.strip() or f"exit code {result.returncode}"
        raise CodegenError(f"protoc failed on {root}:\n{message}")


def _check_declarations(descriptors: Path) -> None:
    """Check every ``(chirp.message)`` option of the compiled files, all at once.

    Raises:
        CodegenError: Listing each message whose declaration is wrong, and each
            message name declared by two messages.
    """
    compiled = FileDescriptorSet.FromString(descriptors.read_bytes())
    problems: list[str] = []
    owners: dict[str, str] = {}
    for file in compiled.file:
        for full_name, message in _messages(file.package, file.message_type):
            if not message.options.HasExtension(options_pb2.message):
                continue
            declared = message.options.Extensions[options_pb2.message]
            fields = {
                f.name: (f.label == FieldDescriptorProto.LABEL_REPEATED, f.type)
                for f in message.field
            }
            try:
                check_declaration(full_name, declared, fields)
            except SchemaError as error:
                problems.append(f"{file.name}: {error}")
            owner = owners.setdefault(declared.name, full_name)
            if owner != full_name:
                problems.append(
                    f"{file.name}: message name {declared.name!r} is declared by "
                    f"both {owner} and {full_name}"
                )
    if problems:
        raise CodegenError(
            "invalid Chirp message declarations:\n" + "\n".join(problems)
        )


def _messages(
    scope: str, messages: Iterable[DescriptorProto]
) -> Iterator[tuple[str, DescriptorProto]]:
    for message in messages:
        full_name = f"{scope}.{message.name}" if scope else message.name
        yield full_name, message
        yield from _messages(full_name, message.nested_type)


def _include_paths(root: Path) -> list[Path]:
    paths = [root]
    if _PACKAGE_PARENT != root:
        paths.append(_PACKAGE_PARENT)
    paths.append(_well_known_protos())
    return paths


def _well_known_protos() -> Path:
    # Located without importing grpc_tools: importing it installs import hooks.
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CodegenError("grpcio-tools is not installed; it provides protoc")
    return Path(next(iter(spec.submodule_search_locations))) / "_proto"


def _mypy_plugin() -> Path:
    plugin = installed_executable("protoc-gen-mypy")
    if plugin is None:
        raise CodegenError(
            "protoc-gen-mypy was not found next to the Python interpreter or on PATH; "
            "install the mypy-protobuf package"
        )
    return plugin


def _compare(staging: Path, produced: Iterable[Path], out: Path) -> None:
    problems: list[str] = []
    files: list[Path] = []
    for relative in produced:
        target = out / relative
        problem = _difference(staging / relative, target)
        if problem is not None:
            problems.append(f"{problem}: {target}")
            files.append(target)

    if problems:
        listing = "\n".join(problems)
        raise CodegenError(
            f"{len(files)} generated file(s) out of date:\n{listing}", files=files
        )


def _difference(fresh: Path, existing: Path) -> str | None:
    if not existing.is_file():
        return "missing"
    if existing.read_bytes() != fresh.read_bytes():
        return "stale"
    return None


def _install(staging: Path, produced: Iterable[Path], out: Path) -> None:
    for relative in produced:
        content = (staging / relative).read_bytes()
        target = out / relative
        # Unchanged files are left alone so their timestamps do not churn.
        if target.is_file() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        _log.debug("wrote %s", target)
