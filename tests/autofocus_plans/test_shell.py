"""`autofocus shell` as a user meets it: real IPython in a pty, Ctrl-C, errors, a wheel."""

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from autofocus_plans import load_table, open_catalog

ROOT = Path(__file__).resolve().parents[2]
AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))
PROMPT = r"In \[\d+\]: "


def _env(tmp_path, **extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AUTOFOCUS_CATALOG=str(tmp_path / "catalog"),
        AUTOFOCUS_TIME_SCALE="0",
        AUTOFOCUS_SAMPLE="beads",
        IPYTHONDIR=str(tmp_path / "ipython"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    env.pop("DISPLAY", None)
    return env


def test_ctrl_c_pauses_a_sweep_and_the_session_survives(tmp_path):
    """One Ctrl-C mid-sweep pauses at the next checkpoint; abort: run stored, LED restored."""
    shell = pexpect.spawn(
        AUTOFOCUS,
        ["shell", "--simple-prompt", "--colors=nocolor", "--no-banner"],
        cwd=tmp_path,
        env=_env(tmp_path, AUTOFOCUS_TIME_SCALE="1"),  # realistic latencies: seconds per sweep
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    shell.logfile_read = transcript = io.StringIO()
    try:
        shell.expect(PROMPT)
        shell.sendline("print('LED before:', led.pattern.get())")
        shell.expect(r"LED before: (\w+)")
        led_before = shell.match.group(1)
        shell.expect(PROMPT)
        # 161 points: ~10 s of sweep, so the Ctrl-C lands mid-sweep even when a loaded machine
        # delays pexpect's reading of the table by seconds
        shell.sendline("RE(brenner_sweep(camera, z, led, -20, 20, 161, illumination='center'))")
        shell.expect(r"\|\s+3 \|")  # the third LiveTable row: the sweep is under way
        shell.sendintr()
        if shell.expect(["deferred pause", PROMPT]) == 1:
            printed = transcript.getvalue()[-4000:]
            pytest.fail(f"Ctrl-C did not pause the sweep; the session printed:\n{printed}")
        # the plan checkpoints before every exposure: the pause comes by itself
        shell.expect("RE.abort()")  # the pause message lists the options
        shell.expect(PROMPT)
        shell.sendline("RE.abort()")
        shell.expect(PROMPT)
        shell.sendline("print('AFTER', RE.state, led.pattern.get(), next(iter(catalog)))")
        shell.expect(r"AFTER (\w+) (\w+) ([0-9a-f-]{36})")
        state, led_after, uid = shell.match.groups()
        shell.expect(PROMPT)
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert "Traceback" not in transcript.getvalue()  # the pause shows its options only
    assert (state, led_after) == ("idle", led_before)
    assert led_before != "center"
    run = open_catalog(tmp_path / "catalog")[uid]
    assert run.stop["exit_status"] == "abort"
    emitted = run.stop["num_events"]["primary"]
    assert emitted >= 3
    assert len(load_table(run)["camera_brenner"]) == emitted  # every event stored


def test_no_catalogue_refuses_runs_and_errors_are_one_sentence(tmp_path):
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    good = tmp_path / "good"
    cells = [
        "print('PLANS', callable(brenner_sweep), catalog)",
        "RE(brenner_sweep(camera, z, led, illumination='center'))",
        "print('LED', led.pattern.get(), 'Z', z.position)",
        f"catalog = connect_catalog(RE, {str(good)!r}, cameras=[camera], create=True)",
        "RE(brenner_sweep(camera, z, led, 20, -20))",
        "%tb",
        "RE(brenner_sweep(camera, z, led, illumination='off'))",
        "1/0",
    ]
    out = subprocess.run(
        [AUTOFOCUS, "shell", "--simple-prompt", "--colors=nocolor", "--no-banner"],
        input="\n".join(cells) + "\n",
        cwd=tmp_path,
        env=_env(tmp_path, AUTOFOCUS_CATALOG=str(not_a_folder)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    ).stdout
    # start-up: one sentence, and the plans are loaded all the same
    assert out.count("No catalogue, so runs are refused") == 1
    assert f"{not_a_folder} is a file, not a catalogue folder" in out
    assert "(no catalogue: runs refused) ready" in out
    assert "PLANS True None" in out
    # a plan that starts a run is refused at its open_run; its clean-up restores LED and stage
    assert "UnrecordedRunRefused: Run refused: nothing would record it" in out
    assert "LED brightfield Z 0.0" in out
    assert not (tmp_path / "autofocus-data").exists()
    # the project's errors: one sentence each, the RunEngine's log as one line
    assert re.search(r"ValueError: Search range 20.00 to -20.00 µm is reversed", out)
    # the LED off: the exposure check refuses (a NoFocusFound) before any search
    assert re.search(r"\nBadExposure: The frames are dark.*\(%tb for the traceback\)", out)
    assert "bluesky: Run aborted (BadExposure)" in out
    # two tracebacks only: the one asked for with %tb, and a ZeroDivisionError (not ours)
    assert out.count("Traceback (most recent call last)") == 2, out
    assert "raise ValueError(" in out and "ZeroDivisionError" in out
    (uid,) = list(open_catalog(good))  # the sweep that found nothing, recorded
    assert open_catalog(good)[uid].stop["exit_status"] == "fail"


def test_wheel_install_finds_its_profile_and_config(tmp_path):
    """A wheel, installed without the checkout, runs the shell from its own package data."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ipython_writes = ("history.sqlite", "log", "pid", "security")  # in a checkout's profile
    for name in ("autofocus_plans", "devices", "models", "profiles"):
        shutil.copytree(
            ROOT / name,
            source / name,
            symlinks=True,  # autofocus_plans/profiles -> ../profiles, as in a checkout
            ignore=shutil.ignore_patterns("__pycache__", *ipython_writes),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run([*pip, "wheel", *offline, "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("bluesky_autofocus-*.whl")
    site = (tmp_path / "site").resolve()
    subprocess.run([*pip, "install", *offline, "--target", site, wheel], check=True)
    shutil.rmtree(source)  # nothing may come from a source tree

    code = (
        "import autofocus_plans.cli as cli; "
        "print('PACKAGE', cli.__file__); "
        "print('PROFILE', get_ipython().profile_dir.location); "
        "print('CONFIG', cli.TILED_CONFIG, cli.TILED_CONFIG.is_file()); "
        "print('PLANS', callable(brenner_sweep)); "
        "from autofocus_plans.shipped import shipped_model_for; "
        "print('SHIPPED', shipped_model_for(camera, led).path)"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run(
        [site / "bin" / "autofocus", "shell", "--no-banner", "-c", code],
        cwd=work,
        env=_env(tmp_path, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    found = dict(re.findall(r"^(PACKAGE|PROFILE|CONFIG|PLANS|SHIPPED) (.*)$", out, flags=re.M))
    package = site / "autofocus_plans"
    assert found["PACKAGE"] == str(package / "cli.py"), out
    assert found["PROFILE"] == str(package / "profiles" / "profile_autofocus")
    assert found["CONFIG"] == f"{package / 'profiles' / 'tiled' / 'config.yml'} True"
    assert found["PLANS"] == "True"
    # the wheel carries the shipped models, so cnn_focus works out of the box
    assert found["SHIPPED"] == str(site / "models" / "shipped" / "pairs-20x-0.40.safetensors")
    assert "catalog ready" in out


def test_read_only_profile_is_copied_for_ipython(tmp_path):
    """IPython writes log/, pid/ and security/ into its profile: a read-only install gets a copy."""
    from autofocus_plans.cli import PROFILE_DIR, ipython_profile_dir

    assert ipython_profile_dir(PROFILE_DIR, tmp_path, writable=True) == PROFILE_DIR
    stale = tmp_path / PROFILE_DIR.name / "startup" / "15-removed-since.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise RuntimeError('an old startup file')")
    copy = ipython_profile_dir(PROFILE_DIR, tmp_path, writable=False)
    assert copy == tmp_path / PROFILE_DIR.name
    startup = sorted(p.name for p in (copy / "startup").iterdir())
    assert startup == sorted(p.name for p in (PROFILE_DIR / "startup").glob("*.py"))
    assert (copy / "ipython_config.py").read_text() == (
        PROFILE_DIR / "ipython_config.py"
    ).read_text()
