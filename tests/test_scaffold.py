"""`chirp init` and `chirp new`: projects that generate, lint and pass their tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chirp._cli import app
from chirp._errors import UsageError
from chirp._scaffold import init_project, new_message, new_worker

RUFF = Path(sys.executable).parent / "ruff"


def chirp(*args: str | Path, cwd: Path) -> str:
    """Run the `chirp` command in-process from `cwd`; return its output."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Return a project made by `chirp init`, with package `shop`."""
    chirp("init", "shop-project", "--package", "shop", cwd=tmp_path)
    return tmp_path / "shop-project"


def test_init_lays_out_a_project_and_says_what_next(tmp_path: Path) -> None:
    output = chirp("init", "my-shop", cwd=tmp_path)

    root = tmp_path / "my-shop"
    assert (root / "src" / "my_shop" / "proto" / "__init__.py").is_file()
    assert "chirp.testing" in (root / "tests" / "conftest.py").read_text()
    assert '"chirp"' in (root / "pyproject.toml").read_text()
    assert "Created: my-shop/README.md" in output
    assert "Next: cd my-shop && chirp new message my_shop" in output


def test_a_new_project_generates_lints_and_passes_its_tests(project: Path) -> None:
    chirp("new", "message", "shop", "order-place", "--param", "order_id", cwd=project)
    chirp("new", "worker", "shop", "order-place", cwd=project)
    chirp(
        "new", "worker", "shop", "order-audit", "--consumes", "order-place", cwd=project
    )
    chirp("new", "operation", "shop", "order-get", cwd=project)
    chirp("gen", "src", cwd=project)

    assert _run([str(RUFF), "check", "."], project).returncode == 0
    assert _run([str(RUFF), "format", "--check", "."], project).returncode == 0
    tests = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd / "src")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=90
    )


def test_workers_are_registered_in_sorted_imports(project: Path) -> None:
    new_message(project, "shop", "order-place", parameters=["order_id"])
    new_worker(project, "shop", "order-place")
    done = new_worker(project, "shop", "order-audit", consumes="order-place")

    registry = project / "src" / "shop" / "workers" / "__init__.py"
    assert done.updated == [registry]
    imports = [line for line in registry.read_text().splitlines() if "import" in line]
    assert imports == [
        "from shop.workers.order_audit import order_audit as order_audit",
        "from shop.workers.order_place import order_place as order_place",
    ]


def test_the_completion_copies_the_parameters_of_the_consumed_message(
    project: Path,
) -> None:
    new_message(project, "shop", "order-ship", parameters=["order_id", "warehouse"])
    new_worker(project, "shop", "order-ship")

    proto = project / "src" / "shop" / "proto" / "order_ship_complete.proto"
    assert 'parameters: ["order_id", "warehouse"]' in proto.read_text()
    module = (project / "src" / "shop" / "workers" / "order_ship.py").read_text()
    expected = (
        "OrderShipComplete(order_id=message.order_id, warehouse=message.warehouse)"
    )
    assert expected in module


def test_nothing_is_overwritten_and_the_error_names_the_file(project: Path) -> None:
    new_message(project, "shop", "order-place")
    proto = project / "src" / "shop" / "proto" / "order_place.proto"
    proto.write_text("// edited by hand\n")

    with pytest.raises(UsageError, match=r"order_place\.proto already exists"):
        new_message(project, "shop", "order-place")
    assert proto.read_text() == "// edited by hand\n"


def test_a_refused_command_writes_nothing(project: Path) -> None:
    new_message(project, "shop", "order-place")
    (project / "tests" / "test_worker_order_place.py").write_text("")

    with pytest.raises(UsageError, match=r"test_worker_order_place\.py already"):
        new_worker(project, "shop", "order-place")
    assert not (project / "src" / "shop" / "workers").exists()
    assert not (
        project / "src" / "shop" / "proto" / "order_place_complete.proto"
    ).exists()


def test_a_worker_needs_its_message(project: Path) -> None:
    with pytest.raises(UsageError, match="chirp new message shop order-pay"):
        new_worker(project, "shop", "order-pay")


def test_init_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(UsageError, match=r"not empty \(notes\.txt\)"):
        init_project(tmp_path, package="shop")


@pytest.mark.parametrize("name", ["Order", "order_place", "-order", "order--place"])
def test_names_must_be_kebab_case(project: Path, name: str) -> None:
    with pytest.raises(UsageError, match="kebab-case"):
        new_message(project, "shop", name)


def test_the_cli_reports_a_refusal_in_red_and_exits_2(project: Path) -> None:
    result = CliRunner().invoke(
        app, ["new", "operation", "nowhere", "x-get", "--root", str(project)]
    )

    assert result.exit_code == 2
    assert "no package 'nowhere'" in result.output
