import importlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from chirptest.messages_pb2 import Ping, Plain, Status, Unrouted

import chirp
from chirp._codegen import CodegenError, generate
from chirp._schema import parameter_text

# Protoc accepts any option values. `chirp gen` checks them when it compiles; Chirp
# checks them again when it first sees a class (code built by plain protoc).
DECLARATIONS = """\
syntax = "proto3";

package {package};

import "chirp/options.proto";

message BadName {{
  option (chirp.message) = {{name: "Bad_Name"}};
  string a = 1;
}}

message NewlineName {{
  option (chirp.message) = {{name: "bad\\n"}};
  string a = 1;
}}

message UnknownParameter {{
  option (chirp.message) = {{name: "{prefix}-unknown", parameters: ["nope"]}};
  string a = 1;
}}

message RepeatedParameter {{
  option (chirp.message) = {{name: "{prefix}-repeated", parameters: ["tags"]}};
  repeated string tags = 1;
}}

message FloatParameter {{
  option (chirp.message) = {{name: "{prefix}-float", parameters: ["x"]}};
  double x = 1;
}}

message TwiceParameter {{
  option (chirp.message) = {{name: "{prefix}-twice", parameters: ["a", "a"]}};
  string a = 1;
}}

message BoolParameter {{
  option (chirp.message) = {{name: "{prefix}-bool", parameters: ["on", "n"]}};
  bool on = 1;
  int64 n = 2;
}}

message First {{
  option (chirp.message) = {{name: "{prefix}-dup"}};
  string a = 1;
}}

message Second {{
  option (chirp.message) = {{name: "{prefix}-dup"}};
  string b = 1;
}}
"""


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """Generate and import test messages; a fresh package keeps the pool apart."""
    package = f"schema_{secrets.token_hex(4)}"
    root = tmp_path_factory.mktemp("protos")
    (root / package).mkdir()
    text = DECLARATIONS.format(package=package, prefix=package.replace("_", "-"))
    (root / package / "defs.proto").write_text(text)
    _plain_protoc(root, f"{package}/defs.proto")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield importlib.import_module(f"{package}.defs_pb2")


def _plain_protoc(root: Path, proto: str) -> None:
    """Compile without Chirp's checks, as a project using plain protoc would."""
    chirp_root = Path(chirp.__file__).parent.parent
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}"]
    command += [f"-I{chirp_root}", f"--python_out={root}", proto]
    subprocess.run(command, check=True, cwd=root)


def test_chirp_gen_rejects_every_invalid_declaration(tmp_path: Path) -> None:
    package = f"schema_{secrets.token_hex(4)}"
    (tmp_path / package).mkdir()
    text = DECLARATIONS.format(package=package, prefix=package.replace("_", "-"))
    (tmp_path / package / "defs.proto").write_text(text)

    with pytest.raises(CodegenError) as raised:
        generate(tmp_path)

    message = str(raised.value)
    for fragment in ("'Bad_Name'", "'bad\\n'", "'nope'", "'tags'", "'x'", "twice"):
        assert fragment in message
    assert f"declared by both {package}.First and {package}.Second" in message
    assert "BoolParameter" not in message
    assert not list(tmp_path.rglob("*_pb2.py"))


def test_message_spec_reads_the_option() -> None:
    status = chirp.message_spec(Status)
    ping = chirp.message_spec(Ping)
    unrouted = chirp.message_spec(Unrouted)

    assert (status.cls, status.name) == (Status, "test-status")
    assert status.parameters == ("region", "user_id")
    assert status.tail_ttl_ms == 60000
    assert (ping.name, ping.parameters, ping.tail_ttl_ms) == ("test-ping", ("key",), 0)
    assert unrouted.parameters == ()
    assert chirp.message_spec(Status) is status


def test_class_without_option_raises_naming_it() -> None:
    with pytest.raises(chirp.SchemaError, match=r"chirptest\.Plain"):
        chirp.message_spec(Plain)


def test_schema_error_is_a_usage_error() -> None:
    with pytest.raises(chirp.UsageError):
        chirp.message_spec(Plain)


def test_parameter_values_are_text() -> None:
    spec = chirp.message_spec(Status)

    assert spec.parameter_values(Status(region="eu", user_id=42)) == ("eu", "42")
    assert spec.parameter_values(Status()) == ("", "0")
    assert parameter_text(True) == "true"
    assert parameter_text(False) == "false"
    assert parameter_text(-7) == "-7"


def test_bool_and_int_parameters(declared: ModuleType) -> None:
    spec = chirp.message_spec(declared.BoolParameter)

    body = declared.BoolParameter(on=True, n=2**40)
    assert spec.parameter_values(body) == ("true", str(2**40))
    assert spec.parameters_from({"on": False}) == ("false", None)


def test_parameters_from_orders_and_fills_missing() -> None:
    spec = chirp.message_spec(Status)

    assert spec.parameters_from({"user_id": 7, "region": "eu"}) == ("eu", "7")
    assert spec.parameters_from({"user_id": 7}) == (None, "7")
    assert spec.parameters_from({"region": None}) == (None, None)
    assert spec.parameters_from({}) == (None, None)


def test_parameters_from_rejects_unknown_names() -> None:
    spec = chirp.message_spec(Status)

    with pytest.raises(chirp.UsageError, match="nope"):
        spec.parameters_from({"region": "eu", "nope": 1})


@pytest.mark.parametrize(
    ("cls_name", "match"),
    [
        ("BadName", "Bad_Name"),
        ("UnknownParameter", "nope"),
        ("RepeatedParameter", "tags"),
        ("FloatParameter", "'x'"),
        ("TwiceParameter", "twice"),
    ],
)
def test_invalid_declarations_raise(
    declared: ModuleType, cls_name: str, match: str
) -> None:
    cls = getattr(declared, cls_name)

    with pytest.raises(chirp.SchemaError, match=match):
        chirp.message_spec(cls)
    # A rejected class is not remembered as valid.
    with pytest.raises(chirp.SchemaError):
        chirp.message_spec(cls)


def test_name_with_trailing_newline_is_rejected(declared: ModuleType) -> None:
    with pytest.raises(chirp.SchemaError):
        chirp.message_spec(declared.NewlineName)


def test_name_declared_by_two_classes_raises(declared: ModuleType) -> None:
    first = chirp.message_spec(declared.First)

    with pytest.raises(chirp.SchemaError, match=r"First.*Second"):
        chirp.message_spec(declared.Second)
    assert chirp.message_spec(declared.First) is first
