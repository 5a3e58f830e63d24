"""Frames reach the catalogue: a bare subscription works, a foreign file stops the run early."""

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import compose_stream_resource

from autofocus_plans import load_frames, open_catalog, subscribe_catalog
from autofocus_plans.frames import FrameLocationError, FrameLocationGuard, frame_file


def test_bare_subscription_points_the_camera_at_the_catalogue(RE, catalog, mic, tmp_path):
    outside = tmp_path / "frames"  # the microscope's own folder: the catalogue cannot serve it
    assert str(mic.camera.write_dir) == str(outside)
    subscribe_catalog(RE, catalog)  # no cameras named, as with any other bluesky detector
    (uid,) = RE(bp.count([mic.camera], 2)).run_start_uids
    assert mic.camera.last_file.is_relative_to(catalog.autofocus_frames_dir)
    assert load_frames(catalog[uid]).shape[0] == 2  # readable now, not refused at read time


def test_server_client_without_frames_folder_refuses_before_the_first_exposure(
    tiled_server, RE, mic, monkeypatch
):
    monkeypatch.delenv("AUTOFOCUS_FRAMES_DIR", raising=False)
    catalog = open_catalog(tiled_server["url"], api_key=tiled_server["api_key"])
    subscribe_catalog(RE, catalog)
    with pytest.raises(FrameLocationError, match=r"set AUTOFOCUS_FRAMES_DIR to the folder"):
        RE(bp.count([mic.camera], 2))
    assert mic.camera.last_file is None  # stage refused: no file opened, no frame taken


def test_foreign_stream_resource_is_refused_with_the_fix(catalog, tmp_path):
    documents = []
    guard = FrameLocationGuard(lambda name, doc: documents.append(name), tmp_path / "served")
    bundle = compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=(tmp_path / "elsewhere" / "det.h5").as_uri(),
        data_key="det_image",
        parameters={"dataset": "/data"},
    )
    with pytest.raises(FrameLocationError, match=r"det_image writes frames to .*outside the"):
        guard("stream_resource", bundle.stream_resource_doc)
    assert documents == []  # refused before the catalogue saw it
    inside = compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=(tmp_path / "served" / "day" / "det.h5")
        .as_uri()
        .replace("file://", "file://localhost"),
        data_key="det_image",
        parameters={"dataset": "/data"},
    )
    guard("stream_resource", inside.stream_resource_doc)
    assert documents == ["stream_resource"]
    assert frame_file("event", {}) is None


def test_bare_subscription_with_the_batched_writer(RE, catalog, mic):
    subscribe_catalog(RE, catalog, durable=False)
    (uid,) = RE(bp.count([mic.camera], 1)).run_start_uids
    assert isinstance(load_frames(catalog[uid]), np.ndarray)
