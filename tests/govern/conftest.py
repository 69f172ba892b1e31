"""Fixtures of the governance tests; the helpers live in govern_world.py (a unique module name)."""

import pytest
from govern_world import world  # noqa: F401  (pytest fixture)


@pytest.fixture(autouse=True)
def witness_dir(tmp_path, monkeypatch):
    """Every test keeps its audit witnesses in its own directory, outside the consortium home."""
    path = tmp_path / "witness"
    monkeypatch.setenv("GENBA_WITNESS_DIR", str(path))
    return path
