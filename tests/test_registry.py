"""The error registry: loading errors.toml files, the raising helpers, the CLI."""

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from chirptest.messages_pb2 import EchoRequest, EchoResponse
from typer.testing import CliRunner

import chirp
from chirp._cli import app

USERS = """
[USER_NOT_FOUND]
status = 404
description = "User {user_id} was not found"
placeholders = ["user_id"]
summary = "The user was not found"

[LIMIT_OUT_OF_RANGE]
status = 400
description = "Limit {limit} is above {maximum}"
placeholders = ["limit", "maximum"]

[HANDLE_TAKEN]
status = 409
description = "The handle is taken"
"""


def write(directory: Path, text: str, name: str = "errors.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def users(tmp_path: Path) -> chirp.Registry:
    return chirp.Registry.load(write(tmp_path / "users", USERS).parent)


@pytest.fixture
def installed(users: chirp.Registry) -> Iterator[chirp.Registry]:
    previous = chirp.use_registry(users)
    yield users
    chirp.use_registry(previous)


def test_a_directory_file_or_package_loads_with_the_builtin_codes(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, USERS)

    from_dir = chirp.Registry.load(tmp_path)
    from_file = chirp.Registry.load(path, builtin=False)
    from_package = chirp.Registry.load("arena.user")

    assert {"USER_NOT_FOUND", "CHIRP_TIMEOUT", "CHIRP_RATE_LIMITED"} <= {
        e.code for e in from_dir
    }
    assert [e.code for e in from_file] == [
        "HANDLE_TAKEN",
        "LIMIT_OUT_OF_RANGE",
        "USER_NOT_FOUND",
    ]
    assert from_file.get("USER_NOT_FOUND").source == str(path)
    assert "HANDLE_TAKEN" in from_package


def test_chirp_ships_a_code_for_each_of_its_conditions() -> None:
    codes = {e.code: e.status for e in chirp.Registry.load()}

    assert codes == {
        "CHIRP_TIMEOUT": 504,
        "CHIRP_STALE_MESSAGE": 409,
        "CHIRP_RECURSIVE_MESSAGE": 508,
        "CHIRP_DECODE_FAILED": 502,
        "CHIRP_INTERNAL": 500,
        "CHIRP_RATE_LIMITED": 429,
    }


BAD_ENTRIES = [
    pytest.param(
        'status = 200\ndescription = "x"', "status must be from 400 to 599", id="200"
    ),
    pytest.param(
        'status = "404"\ndescription = "x"', "status must be an int", id="str-status"
    ),
    pytest.param(
        'status = true\ndescription = "x"', "status must be an int", id="bool-status"
    ),
    pytest.param("status = 404", "description must be", id="no-description"),
    pytest.param(
        'status = 404\ndescription = "User {user_id}"',
        "{user_id}, which placeholders does not declare",
        id="undeclared-placeholder",
    ),
    pytest.param(
        'status = 404\ndescription = "User"\nplaceholders = ["user_id"]',
        "placeholder user_id is declared but description never uses it",
        id="unused-placeholder",
    ),
    pytest.param(
        'status = 404\ndescription = "User {user_id!r}"\nplaceholders = ["user_id"]',
        "plain {name} placeholders",
        id="conversion",
    ),
    pytest.param(
        'status = 404\ndescription = "User {"',
        "is not a valid template",
        id="unbalanced-brace",
    ),
    pytest.param(
        'status = 404\ndescription = "x {a}"\nplaceholders = ["a"]\nsummary = "{a}"',
        "summary is used without context",
        id="summary-placeholder",
    ),
    pytest.param(
        'status = 404\ndescription = "x"\nstauts = 1',
        "unknown key(s) stauts",
        id="typo",
    ),
]


@pytest.mark.parametrize(("entry", "problem"), BAD_ENTRIES)
def test_a_bad_entry_is_refused_naming_file_and_code(
    tmp_path: Path, entry: str, problem: str
) -> None:
    path = write(tmp_path, f"[BROKEN]\n{entry}\n")

    with pytest.raises(chirp.InvalidErrorDefinition) as raised:
        chirp.Registry.load(path)

    assert str(raised.value).startswith(f"{path}: BROKEN: ")
    assert problem in str(raised.value)
    assert (raised.value.source, raised.value.code) == (str(path), "BROKEN")


@pytest.mark.parametrize("name", ["user_not_found", "UserNotFound", "USER__X", "_A"])
def test_a_code_not_in_upper_snake_case_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'["{name}"]\nstatus = 404\ndescription = "x"\n')

    with pytest.raises(chirp.InvalidErrorDefinition) as raised:
        chirp.Registry.load(path)

    assert str(raised.value) == (
        f"{path}: {name}: a code is upper snake case, like USER_NOT_FOUND"
    )


def test_a_code_defined_twice_names_both_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a", USERS)
    second = write(tmp_path / "b", '[HANDLE_TAKEN]\nstatus = 409\ndescription = "x"')

    with pytest.raises(chirp.InvalidErrorDefinition) as raised:
        chirp.Registry.load(first, second)

    assert str(raised.value) == f"{second}: HANDLE_TAKEN: already defined in {first}"


def test_a_code_of_chirp_cannot_be_redefined(tmp_path: Path) -> None:
    path = write(tmp_path, '[CHIRP_TIMEOUT]\nstatus = 504\ndescription = "late"')

    with pytest.raises(chirp.InvalidErrorDefinition, match="already defined in"):
        chirp.Registry.load(path)


def test_a_code_defined_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'A = {status = 400, description = "a"}\n' * 2)

    with pytest.raises(chirp.InvalidErrorDefinition, match="not valid TOML") as raised:
        chirp.Registry.load(path)

    assert raised.value.source == str(path)


def test_a_missing_file_or_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(chirp.InvalidErrorDefinition, match="cannot be read"):
        chirp.Registry.load(tmp_path / "nowhere")
    with pytest.raises(
        chirp.InvalidErrorDefinition, match=r"no errors\.toml in package"
    ):
        chirp.Registry.load("no_such_package_here")


def test_error_fills_the_template_and_keeps_the_context(users: chirp.Registry) -> None:
    error = users.error("USER_NOT_FOUND", user_id="u1")

    assert isinstance(error, chirp.OperationError)
    assert (error.code, error.status) == ("USER_NOT_FOUND", 404)
    assert error.message == str(error) == "User u1 was not found"
    assert error.metadata == {"user_id": "u1"}


def test_without_context_the_summary_is_the_message(users: chirp.Registry) -> None:
    assert users.error("USER_NOT_FOUND").message == "The user was not found"
    assert users.error("HANDLE_TAKEN").message == "The handle is taken"


def test_a_missing_or_extra_context_key_is_misuse(users: chirp.Registry) -> None:
    with pytest.raises(chirp.ErrorContextMismatch) as missing:
        users.error("LIMIT_OUT_OF_RANGE", limit=5)
    with pytest.raises(chirp.ErrorContextMismatch) as extra:
        users.error("USER_NOT_FOUND", user_id="u1", handle="ada")
    with pytest.raises(chirp.ErrorContextMismatch, match="lacks limit, maximum"):
        users.error("LIMIT_OUT_OF_RANGE")

    assert str(missing.value) == "the context of error LIMIT_OUT_OF_RANGE lacks maximum"
    assert extra.value.unexpected == ["handle"]
    assert isinstance(extra.value, chirp.UsageError)


def test_an_unknown_code_is_misuse(users: chirp.Registry) -> None:
    with pytest.raises(chirp.UnknownErrorCode, match="'NOPE' is not defined"):
        users.bail("NOPE")


def test_bail_ensure_and_unwrap_raise_from_the_registry(
    users: chirp.Registry,
) -> None:
    users.ensure(True, "HANDLE_TAKEN")
    assert users.unwrap("found", "USER_NOT_FOUND", user_id="u1") == "found"

    with pytest.raises(chirp.OperationError, match="User u1 was not found"):
        users.bail("USER_NOT_FOUND", user_id="u1")
    with pytest.raises(chirp.OperationError, match="Limit 9 is above 5"):
        users.ensure(9 <= 5, "LIMIT_OUT_OF_RANGE", limit=9, maximum=5)
    with pytest.raises(chirp.OperationError, match="User u2 was not found"):
        users.unwrap(None, "USER_NOT_FOUND", user_id="u2")


def test_ensure_and_unwrap_check_the_context_even_when_they_pass(
    users: chirp.Registry,
) -> None:
    with pytest.raises(chirp.ErrorContextMismatch):
        users.ensure(True, "LIMIT_OUT_OF_RANGE", limit=1)
    with pytest.raises(chirp.ErrorContextMismatch):
        users.unwrap("found", "HANDLE_TAKEN", handle="ada")


def test_the_module_helpers_use_the_installed_registry(
    installed: chirp.Registry,
) -> None:
    assert chirp.default_registry() is installed
    assert chirp.unwrap(3, "USER_NOT_FOUND", user_id="u1") == 3
    chirp.ensure(True, "HANDLE_TAKEN")

    with pytest.raises(chirp.OperationError) as bailed:
        chirp.bail("USER_NOT_FOUND", user_id="u1")
    with pytest.raises(chirp.OperationError) as ensured:
        chirp.ensure(False, "HANDLE_TAKEN")

    assert bailed.value.status == 404
    assert ensured.value.code == "HANDLE_TAKEN"
    assert chirp.error("USER_NOT_FOUND").message == "The user was not found"


def test_the_default_registry_holds_chirps_codes() -> None:
    limited = chirp.error("CHIRP_RATE_LIMITED", retry_after=2)

    assert (limited.status, limited.metadata) == (429, {"retry_after": 2})


def test_internal_assert_names_the_file_and_line() -> None:
    chirp.internal_assert(True, "never raised")

    with pytest.raises(chirp.InvariantViolated) as raised:
        chirp.internal_assert(1 > 2, "one is above two")  # the line it names

    line = next(
        number
        for number, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if "# the line it names" in text
    )
    assert raised.value.location == f"{__file__}:{line}"
    assert str(raised.value) == f"invariant violated at {__file__}:{line}: " + (
        "one is above two"
    )


@chirp.operation(name="asserting")
async def asserting(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    chirp.internal_assert(req.text, "the text is never empty")
    return EchoResponse(text=req.text)


async def test_an_operation_wraps_a_failed_assertion_as_internal(
    client: chirp.Client,
) -> None:
    ctx = client.context()

    with pytest.raises(chirp.InternalError) as raised:
        await asserting(ctx, EchoRequest(text=""))

    assert raised.value.ray_id == ctx.ray_id
    assert isinstance(raised.value.__cause__, chirp.InvariantViolated)


def test_the_reference_lists_code_status_and_description(
    users: chirp.Registry,
) -> None:
    reference = users.reference()

    assert reference.startswith("# Error codes\n\n| code | status | description |\n")
    assert (
        '| <a id="user_not_found"></a>`USER_NOT_FOUND` | 404 | '
        "User {user_id} was not found (without context: The user was not found) |"
    ) in reference
    assert "| 429 | Too many requests; retry after {retry_after} seconds" in reference


def test_chirp_errors_prints_the_reference_of_its_paths(tmp_path: Path) -> None:
    write(tmp_path / "users", USERS)

    result = CliRunner().invoke(app, ["errors", str(tmp_path / "users")])

    assert result.exit_code == 0, result.output
    assert result.stdout == chirp.Registry.load(tmp_path / "users").reference()


def test_chirp_errors_refuses_a_bad_file_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[BAD]\nstatus = 99\ndescription = 'x'\n")

    result = CliRunner().invoke(app, ["errors", str(path)])

    # The console wraps long lines: compare the words.
    words = " ".join(result.stderr.split())
    assert result.exit_code == 2
    assert f"{path}: BAD: status must be from 400 to 599, got 99" in words
