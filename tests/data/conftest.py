"""Fixtures of the data-layer tests; helpers live in data_synth.py."""

from __future__ import annotations

import pytest
from data_synth import TASKS, coded_episodes, make_spec

from genba.data.layout import write_dataset


@pytest.fixture
def toy_dataset(tmp_path):
    """A 4-episode dataset (lengths 5, 7, 1, 10) of a 3-d obs / 2-d action spec."""
    spec = make_spec()
    root = write_dataset(tmp_path / "toy", coded_episodes(spec, [5, 7, 1, 10]), spec, TASKS,
                         extra={"collection": {"attempted": 5, "kept": 4, "failed": 1}})
    return root, spec
