"""bp.scan of the simulated microscope under a real RunEngine: focus, documents, frames."""

from urllib.parse import urlparse

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from devices import SAMPLE_FAMILIES, SimMicroscope
from models.focus_measures import brenner


@pytest.mark.parametrize("family", SAMPLE_FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brenner_maximum_within_one_step_of_true_focus(RE, tmp_path, family, seed):
    rng = np.random.default_rng(seed)
    focus = float(rng.uniform(-20, 20))
    mic = SimMicroscope(family, seed=seed, focus_um=focus, frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    # the scan is centred on a guess, not on the truth
    guess = focus + float(rng.uniform(-0.5, 0.5)) * dof
    num = 13
    step = 6 * dof / (num - 1)

    docs = []
    RE(
        bp.scan([mic.camera], mic.z, guess - 3 * dof, guess + 3 * dof, num),
        lambda name, doc: docs.append((name, doc)),
    )

    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    events = [d for n, d in docs if n == "event"]
    z = np.array([e["data"]["z"] for e in events])
    b = np.array([e["data"]["camera_brenner"] for e in events])
    assert len(events) == num
    assert abs(z[np.argmax(b)] - mic.true_focus()) <= step

    # every frame reads back from its HDF5 file and matches the reading taken from it
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    datums = [d for n, d in docs if n == "stream_datum"]
    assert len(datums) == num
    path = urlparse(resource["uri"]).path
    with h5py.File(path, "r", swmr=True) as f:
        frames = f[resource["parameters"]["dataset"]][:]
    assert frames.shape == (num, 256, 256) and frames.dtype == np.uint16
    for datum, event in zip(datums, events, strict=True):
        frame = frames[datum["indices"]["start"]]
        assert brenner(frame) == event["data"]["camera_brenner"]


def test_descriptor_records_image_as_external_stream(RE, mic):
    docs = []
    RE(bp.count([mic.camera, mic.led], 2), lambda n, d: docs.append((n, d)))
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    image_key = descriptor["data_keys"]["camera_image"]
    assert image_key["external"] == "STREAM:"
    assert image_key["shape"] == [256, 256]
    assert "camera_image" not in next(d for n, d in docs if n == "event")["data"]
    config = descriptor["configuration"]
    assert config["camera"]["data"]["camera_exposure_time"] == 0.01
    assert config["led"]["data"]["led_pattern"] == "brightfield"
