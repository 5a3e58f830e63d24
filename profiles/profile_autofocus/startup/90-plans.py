# Plans: bluesky's own and the autofocus plans, ready for RE(...) or the queue.
import inspect

from bluesky.plans import count, list_scan, rel_scan, scan  # noqa: F401
from bluesky_queueserver import is_re_worker_active

from autofocus_plans import (  # noqa: F401
    brenner_sweep,
    calibrate_model,
    cnn_focus,
    collect_training_set,
    fast_focus,
    find_runs,
    fly_sweep,
    focus_map,
    load_frames,
    load_table,
    open_catalog,
    reanalyze,
    replay,
    tile_scan,
    track_focus,
)

# the plan modules use postponed annotations (strings); the queueserver builds its parameter
# validation from the signature, so hand it the evaluated one (Readable, Movable, ...)
for _plan in (
    brenner_sweep,
    fast_focus,
    collect_training_set,
    cnn_focus,
    track_focus,
    calibrate_model,
):
    _plan.__signature__ = inspect.signature(_plan, eval_str=True)

if not is_re_worker_active():
    _ready = "catalog" if catalog is not None else "(no catalogue: runs refused)"  # noqa: F821
    print(
        f"bluesky-autofocus: RE, camera, led, z, {_ready} ready ({microscope!r}).\n"  # noqa: F821
        "  try: RE(brenner_sweep(camera, z, led))  (the range is relative: -20 to +20 µm)"
    )
