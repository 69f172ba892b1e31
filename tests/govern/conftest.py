"""Fixtures of the governance tests; the helpers live in govern_world.py (a unique module name)."""

from govern_world import world  # noqa: F401  (pytest fixture)
