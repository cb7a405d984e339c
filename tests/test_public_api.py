import inspect
import types

import pytest

import chirp
import chirp.testing
from chirp import _errors

PUBLIC_MODULES = [chirp, chirp.testing]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_unique_and_resolves(module: types.ModuleType) -> None:
    names = module.__all__

    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name), name


def test_no_module_or_private_name_is_exported() -> None:
    for name in chirp.__all__:
        value = getattr(chirp, name)
        assert not name.startswith("_"), name
        assert not isinstance(value, types.ModuleType), name
        assert value.__module__.startswith("chirp."), name


def test_exported_names_are_documented() -> None:
    for name in chirp.__all__:
        assert inspect.getdoc(getattr(chirp, name)), name


def test_every_error_of_the_tree_is_exported() -> None:
    errors = [
        value
        for name, value in vars(_errors).items()
        if inspect.isclass(value)
        and issubclass(value, chirp.ChirpError)
        and not name.startswith("_")
    ]

    assert chirp.ChirpError in errors
    for error in errors:
        assert getattr(chirp, error.__name__, None) is error
        assert error.__name__ in chirp.__all__


def test_public_names_of_re_exporting_modules_are_exported() -> None:
    """A name the root imports from a private module is listed in `__all__`."""
    imported = {
        name
        for name, value in vars(chirp).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith("chirp._")
    }

    assert imported <= set(chirp.__all__)
