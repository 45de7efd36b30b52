"""Shared by the tests of scripts/: import a script as a module (scripts/ is not a package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """load_script("parity") -> scripts/parity.py, executed as the module `skd_script_parity`."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"skd_script_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
