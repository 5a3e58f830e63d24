"""The Databroker/Tiled catalogue, embedded and served, with real runs written into it."""

import subprocess
import sys
import textwrap

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.callbacks import LiveTable
from ophyd.utils import LimitError

from autofocus_plans import (
    CatalogError,
    find_runs,
    load_frames,
    load_table,
    open_catalog,
    replay,
    subscribe_catalog,
)


def _scan_capturing_frames(RE, mic, num=5, **md):
    frames, events = [], []

    def grab(name, doc):
        if name == "event" and doc["data"].get("camera_brenner") is not None:
            frames.append(mic.camera.last_frame.copy())
            events.append(doc)

    (uid,) = RE(bp.scan([mic.camera], mic.z, -6, 6, num), grab, **md).run_start_uids
    return uid, np.stack(frames), events


def test_frames_bit_exact_and_scalars_equal(catalog_RE, catalog, mic):
    uid, frames, events = _scan_capturing_frames(catalog_RE, mic, sample="cells:1")
    run = catalog[uid]
    assert type(run).__name__.startswith("BlueskyRun")
    stored = load_frames(run)
    assert stored.dtype == np.uint16
    assert np.array_equal(stored, frames)
    table = load_table(run)
    for column in ("camera_brenner", "camera_mean", "camera_max", "z"):
        assert np.array_equal(table[column], [e["data"][column] for e in events])


def test_search_by_plan_sample_and_time(catalog_RE, catalog, mic):
    import time

    before = time.time()
    uid_scan, _, _ = _scan_capturing_frames(catalog_RE, mic, num=3, sample="beads:2")
    (uid_count,) = catalog_RE(bp.count([mic.camera], 2), sample="cells:7").run_start_uids
    after = time.time()
    assert list(find_runs(catalog, plan_name="scan")) == [uid_scan]
    assert list(find_runs(catalog, plan_name="count")) == [uid_count]
    assert list(find_runs(catalog, sample="cells:7")) == [uid_count]
    assert set(find_runs(catalog, since=before - 1, until=after + 1)) == {uid_scan, uid_count}
    assert len(find_runs(catalog, since=after + 3600)) == 0


def test_data_persist_across_processes(tmp_path):
    location = tmp_path / "shared-catalog"
    writer = textwrap.dedent(
        f"""
        import bluesky.plans as bp
        from bluesky import RunEngine
        from autofocus_plans import open_catalog, subscribe_catalog
        from devices import SimMicroscope
        catalog = open_catalog({str(location)!r}, create=True)
        mic = SimMicroscope("bars", seed=3, time_scale=0)
        RE = RunEngine({{}})
        subscribe_catalog(RE, catalog, cameras=[mic.camera])
        (uid,) = RE(bp.count([mic.camera], 3), sample="bars:3")
        print(uid)
        """
    )
    uid = subprocess.run(
        [sys.executable, "-c", writer], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    reader = textwrap.dedent(
        f"""
        from autofocus_plans import open_catalog, load_frames
        run = open_catalog({str(location)!r})[{uid!r}]
        print(run.start["sample"], load_frames(run).shape, run.stop["exit_status"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", reader], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "bars:3 (3, 256, 256) success"


def test_documents_replay_into_livetable(catalog_RE, catalog, mic):
    live_lines, replay_lines = [], []
    fields = ["z", "camera_brenner"]
    (uid,) = catalog_RE(
        bp.scan([mic.camera], mic.z, -4, 4, 5), LiveTable(fields, out=live_lines.append)
    ).run_start_uids
    run = catalog[uid]
    names = [name for name, _ in run.documents()]
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("event") == 5 and "descriptor" in names
    replay(run, LiveTable(fields, out=replay_lines.append))
    assert replay_lines == live_lines
    stored_events = [d for n, d in run.documents() if n == "event"]
    assert [e["data"]["z"] for e in stored_events] == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_unwritable_catalogue_path_fails_before_any_exposure(tmp_path, mic):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the catalogue folder should be")
    with pytest.raises(CatalogError, match=r"Cannot write the catalogue at .*choose a folder"):
        open_catalog(blocker / "catalog", create=True)
    assert mic.camera.last_frame is None


def test_half_failed_plan_leaves_readable_run(catalog_RE, catalog, mic):
    frames = []
    catalog_RE.subscribe(lambda n, d: n == "event" and frames.append(mic.camera.last_frame.copy()))
    with pytest.raises(LimitError):
        catalog_RE(bp.list_scan([mic.camera], mic.z, [0.0, 1.0, 2.0, 5000.0]))
    (run,) = [catalog[uid] for uid in catalog]
    assert run.stop["exit_status"] == "fail"
    assert np.array_equal(load_frames(run), np.stack(frames))
    assert len(frames) == 3


def test_server_round_trip_with_api_key(tiled_server, RE, mic, monkeypatch):
    monkeypatch.setenv("AUTOFOCUS_FRAMES_DIR", str(tiled_server["frames"]))
    catalog = open_catalog(tiled_server["url"], api_key=tiled_server["api_key"])
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    assert str(mic.camera.write_dir) == str(tiled_server["frames"])
    frames = []
    RE.subscribe(lambda n, d: n == "event" and frames.append(mic.camera.last_frame.copy()))
    (uid,) = RE(bp.count([mic.camera], 2), sample="cells:1").run_start_uids
    reader = open_catalog(tiled_server["url"], api_key=tiled_server["api_key"])
    run = reader[uid]
    assert run.start["sample"] == "cells:1"
    assert np.array_equal(load_frames(run), np.stack(frames))
    assert [n for n, _ in run.documents()].count("event") == 2

    with pytest.raises(CatalogError, match="refused the API key; set TILED_API_KEY"):
        open_catalog(tiled_server["url"], api_key="wrong-key")


def test_unreachable_server_is_one_sentence():
    with pytest.raises(
        CatalogError, match=r"Cannot reach the catalogue server at http://127.0.0.1:9"
    ):
        open_catalog("http://127.0.0.1:9", api_key="x")


# -- where a catalogue may be opened or created ---------------------------------------------
@pytest.mark.parametrize(
    "location", ["htp://127.0.0.1:8765", "http:///no-host", "ftp://example.org/catalog"]
)
def test_url_that_is_not_http_with_a_host_is_refused(tmp_path, monkeypatch, location):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogError, match=r"is not a catalogue server URL: give http://HOST"):
        open_catalog(location)
    assert list(tmp_path.iterdir()) == []  # no folder named after the typo


def test_folder_that_is_not_a_catalogue_is_refused_even_with_create(tmp_path):
    folder = tmp_path / "my-thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    for create in (False, True):
        with pytest.raises(CatalogError, match=r"is a folder but not a catalogue .*--create"):
            open_catalog(folder, create=create)
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.tex"]
    with pytest.raises(CatalogError, match=r"is a file, not a catalogue folder"):
        open_catalog(folder / "chapter1.tex")


def test_new_catalogue_only_with_create_or_at_the_default_location(tmp_path, monkeypatch):
    typo = tmp_path / "catalgo"
    with pytest.raises(CatalogError, match=r"There is no catalogue at .*catalgo.*--create"):
        open_catalog(typo)
    assert not typo.exists()
    assert len(open_catalog(typo, create=True)) == 0
    assert (typo / "catalog.db").is_file()
    assert len(open_catalog(typo)) == 0  # now it is one: no create needed

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOFOCUS_CATALOG", raising=False)
    open_catalog()
    assert (tmp_path / "autofocus-data" / "catalog.db").is_file()


def test_quick_listing_reads_the_same_rows_as_tiled(catalog_RE, catalog, mic):
    """`autofocus runs` reads an embedded catalogue's SQLite files directly; same rows."""
    import time

    from autofocus_plans import brenner_sweep, find_runs
    from autofocus_plans.durable import DurableWriter, RunJournals, journal_dir_for
    from autofocus_plans.replay import iterate_runs, summarize_run
    from autofocus_plans.runlist import quick_summaries

    sweep = catalog_RE(
        brenner_sweep(mic.camera, mic.z, mic.led, -20, 20, 21, md={"sample": "cells:1"})
    ).plan_result
    (uid_count,) = catalog_RE(bp.count([mic.camera], 2), sample="beads:2").run_start_uids
    middle = time.time()
    from bluesky import RunEngine

    writer = DurableWriter(catalog, journal_dir=None)
    cut_short = RunEngine({})  # a writer that dies before the stop document
    cut_short.subscribe(lambda name, doc: name != "stop" and writer(name, doc))
    cut_short(bp.count([mic.camera], 1), sample="beads:2")

    journals = RunJournals(journal_dir_for(catalog))
    filters = [
        {},
        {"plan_name": "count"},
        {"sample": "beads:2"},
        {"since": middle},
        {"until": middle},
        {"plan_name": "brenner_sweep", "since": "2000-01-01", "until": "2999-12-31 23:59"},
        {"limit": 2},
    ]
    for query in filters:
        query = {"limit": 20} | query
        limit = query.pop("limit")
        results = find_runs(catalog, **query)
        rows = [summarize_run(r, journals) for r in iterate_runs(results, limit)]
        assert quick_summaries(catalog.autofocus_root, limit=limit, **query) == (len(results), rows)
    count, rows = quick_summaries(catalog.autofocus_root)
    assert count == 3
    assert [r.exit_status for r in rows] == ["incomplete (no stop)", "success", "success"]
    assert rows[1].uid == uid_count[:8] and rows[2].result == f"best z {sweep.best_z:.2f} µm"


def test_two_embedded_catalogues_in_one_process(catalog, tmp_path):
    # Tiled's server settings are process-wide: a second in-process catalogue once
    # replaced the API key and locked the first one's client out (HTTP 401)
    other = open_catalog(tmp_path / "other", create=True)
    assert (len(catalog), len(other)) == (0, 0)
