"""Fixtures for the model tests; builders live in model_synth.py."""

import dataclasses

import pytest

from genba.model.config import get_preset
from model_synth import make_specs


@pytest.fixture
def specs():
    return make_specs()


@pytest.fixture(params=["l1", "flow"])
def debug_cfg(request):
    return dataclasses.replace(get_preset("debug"), head=request.param)
