"""The import contracts of pyproject.toml (``[tool.importlinter]``) hold, so ``pytest`` alone also fails when a
lower layer imports a higher one, the monitoring library imports the server side, or two modules import each
other. ``make lint`` and ``make test`` run the same check as ``lint-imports``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

_CHECK = """
import sys
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))
"""


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter comes with the dev extra: pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-c", _CHECK, str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
