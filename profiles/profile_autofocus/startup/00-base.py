# RunEngine, live feedback and metadata. Loaded in name order by
# `ipython --profile-dir=profiles/profile_autofocus` (or `autofocus shell`) and by the
# queueserver (`--startup-dir profiles/profile_autofocus/startup`).
import os

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky_queueserver import is_re_worker_active

RE = RunEngine({}, call_returns_result=True)
RE.md["operator"] = os.environ.get("USER", "unknown")
bec = BestEffortCallback()
if not os.environ.get("DISPLAY") or is_re_worker_active():
    bec.disable_plots()  # no screen here: tables and peak stats only
RE.subscribe(bec)

if not is_re_worker_active():
    from bluesky.utils import ProgressBarManager

    from autofocus_plans.session import show_short_errors

    RE.waiting_hook = ProgressBarManager()
    # NoFocusFound, CatalogError, bad parameters: one sentence each (%tb shows the rest)
    show_short_errors()
