"""Fixtures for the model tests; builders live in tests/fixtures.py."""

import dataclasses

import pytest

from genba.model.config import get_preset
from tests.fixtures import toy_specs


@pytest.fixture
def specs():
    return toy_specs()


@pytest.fixture(params=["l1", "flow"])
def debug_cfg(request):
    return dataclasses.replace(get_preset("debug"), head=request.param)
