"""connect_catalog: a session records to one catalogue, or refuses to run plans unrecorded."""

import pytest
from bluesky.plans import count

from autofocus_plans import open_catalog
from autofocus_plans.session import UnrecordedRunRefused, connect_catalog


def test_refuses_unrecorded_runs_then_records_and_switches(RE, mic, tmp_path, capsys):
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    cameras = [mic.camera]

    assert connect_catalog(RE, not_a_folder, cameras=cameras) is None
    assert "No catalogue, so runs are refused" in capsys.readouterr().err
    with pytest.raises(UnrecordedRunRefused, match="Run refused: nothing would record it"):
        RE(count(cameras))
    assert RE.state == "idle"

    assert connect_catalog(RE, tmp_path / "first", cameras=cameras, create=True) is not None
    RE(count(cameras))
    # a failed switch keeps the catalogue that works, and says so
    assert connect_catalog(RE, not_a_folder, cameras=cameras) is None
    assert "runs still go to the previous one" in capsys.readouterr().err
    RE(count(cameras))
    assert connect_catalog(RE, tmp_path / "second", cameras=cameras, create=True) is not None
    RE(count(cameras))
    # one catalogue at a time (each reopened to read: a later embedded catalogue in the
    # same process invalidates the API key of an earlier one's client)
    assert len(open_catalog(tmp_path / "first")) == 2
    assert len(open_catalog(tmp_path / "second")) == 1
