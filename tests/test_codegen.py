import importlib
import secrets
from pathlib import Path

import pytest

import chirp
from chirp import options_pb2
from chirp._codegen import CodegenError, find_protos, generate, generate_chirp

PROTO = """\
syntax = "proto3";

package {package};

import "chirp/options.proto";

message Thing {{
  option (chirp.message) = {{name: "x-y", parameters: ["a"]}};
  string a = 1;
  string b = 2;
}}
"""


@pytest.fixture
def package() -> str:
    """Name each test's proto package apart: protobuf's descriptor pool is global."""
    return f"gen_{secrets.token_hex(4)}"


@pytest.fixture
def proto_root(tmp_path: Path, package: str) -> Path:
    root = tmp_path / "protos"
    (root / package).mkdir(parents=True)
    (root / package / "thing.proto").write_text(PROTO.format(package=package))
    return root


def test_generate_writes_module_and_stub(
    proto_root: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = generate(proto_root)

    assert files == [
        proto_root / package / "thing_pb2.py",
        proto_root / package / "thing_pb2.pyi",
    ]
    monkeypatch.syspath_prepend(str(proto_root))
    module = importlib.import_module(f"{package}.thing_pb2")
    options = module.Thing.DESCRIPTOR.GetOptions().Extensions[options_pb2.message]
    assert options.name == "x-y"
    assert list(options.parameters) == ["a"]


def test_generate_into_separate_out_dir(
    proto_root: Path, package: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    files = generate(proto_root, out=out)

    assert files == [out / package / "thing_pb2.py", out / package / "thing_pb2.pyi"]
    assert all(path.is_file() for path in files)
    assert not (proto_root / package / "thing_pb2.py").exists()


def test_check_passes_when_current(proto_root: Path) -> None:
    files = generate(proto_root)

    assert generate(proto_root, check=True) == files


def test_check_reports_stale_and_missing_files_without_writing(
    proto_root: Path,
) -> None:
    module, stub = generate(proto_root)
    module.write_text(module.read_text() + "# edited\n")
    stub.unlink()

    with pytest.raises(CodegenError) as caught:
        generate(proto_root, check=True)

    assert caught.value.files == (module, stub)
    assert f"stale: {module}" in str(caught.value)
    assert f"missing: {stub}" in str(caught.value)
    assert module.read_text().endswith("# edited\n")
    assert not stub.exists()


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.proto").write_text(
        'syntax = "proto3";\nmessage A { int32 x = 1 }\n'
    )

    with pytest.raises(CodegenError, match=r"broken\.proto:2:"):
        generate(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "broken.proto"]


def test_no_protos_generates_nothing(tmp_path: Path) -> None:
    assert generate(tmp_path) == []


def test_find_protos_skips_chirp_package_and_hidden_dirs(
    proto_root: Path, package: str
) -> None:
    (proto_root / "chirp").symlink_to(Path(chirp.__file__).parent)
    (proto_root / ".venv").mkdir()
    (proto_root / ".venv" / "other.proto").write_text('syntax = "proto3";\n')

    assert find_protos(proto_root) == [f"{package}/thing.proto"]


def test_root_inside_chirp_package_is_refused() -> None:
    with pytest.raises(CodegenError, match="inside the chirp package"):
        generate(Path(chirp.__file__).parent)


def test_chirp_generated_files_are_current() -> None:
    files = generate_chirp(check=True)

    assert [path.name for path in files] == [
        "envelope_pb2.py",
        "envelope_pb2.pyi",
        "options_pb2.py",
        "options_pb2.pyi",
    ]


@pytest.mark.parametrize("tree", ["examples", "tests"])
def test_committed_generated_files_are_current(tree: str) -> None:
    root = Path(__file__).parent.parent / tree

    files = generate(root, check=True)

    assert any(path.name.endswith("_pb2.py") for path in files)


def test_benchmark_generated_files_are_current() -> None:
    repo = Path(__file__).parent.parent

    files = generate(repo / "bench" / "proto", out=repo, check=True)

    assert [path.name for path in files] == ["messages_pb2.py", "messages_pb2.pyi"]
