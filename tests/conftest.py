"""Shared fixtures: a real RunEngine and a simulated microscope with instant moves."""

from __future__ import annotations

import pytest
from bluesky import RunEngine

from devices import SimMicroscope


@pytest.fixture
def RE():
    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def mic(tmp_path):
    return SimMicroscope("cells", seed=1, frames_dir=tmp_path / "frames", time_scale=0)
