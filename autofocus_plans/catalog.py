"""Open the Databroker (Tiled) catalogue, embedded or on a server, and subscribe a RunEngine.

A filesystem path gives an *embedded* catalogue: a Tiled SQL catalogue
(SQLite) with its data folder, served in-process (no server to start). The
layout of such a folder::

    catalog.db          run metadata (SQLite)
    tables.db           event tables (SQLite)
    data/               other written data
    frames/             camera HDF5 files (readable storage: the catalogue serves them)
    running/            one journal per run being written (see ``durable``)

An ``http(s)://`` URL gives a client of a Tiled server; the API key comes
from the ``TILED_API_KEY`` environment variable (or the ``api_key``
argument) and the cameras write under ``AUTOFOCUS_FRAMES_DIR``, a folder
the server lists in its ``readable_storage``.

Only the default location (``$AUTOFOCUS_CATALOG``, else ``./autofocus-data``)
is created on first use; any other folder must already hold a catalogue
unless ``create=True`` is given, so a mistyped path is an error rather than
a new, empty catalogue.

Everything heavy (Tiled's server, bluesky) is imported inside the functions
that need it, so that importing this module, and ``autofocus --help``, stay
fast.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "API_KEY_ENV",
    "CATALOG_ENV",
    "DEFAULT_LOCATION",
    "FRAMES_DIR_ENV",
    "CatalogError",
    "catalog_config",
    "catalog_root",
    "frames_dir_for",
    "open_catalog",
    "subscribe_catalog",
]

API_KEY_ENV = "TILED_API_KEY"
FRAMES_DIR_ENV = "AUTOFOCUS_FRAMES_DIR"
CATALOG_ENV = "AUTOFOCUS_CATALOG"
DEFAULT_LOCATION = "autofocus-data"

# The file that makes a folder an embedded catalogue.
CATALOG_DB = "catalog.db"
# Seconds allowed to connect to a server before giving up: Tiled's own client retries a
# refused connection for up to 45 s (stamina back-off), far too long for a typo. A server
# that accepts the connection gets longer to answer (a busy one is still reachable).
SERVER_CONNECT_TIMEOUT_S = 2.0
SERVER_ANSWER_TIMEOUT_S = 20.0

# One API key for every embedded catalogue of this process. Tiled keeps server settings in
# one process-wide object that each in-process app overwrites, so two embedded catalogues
# opened with different keys would lock the first one's client out (HTTP 401). The key
# never leaves the process: embedded catalogues have no network socket.
_EMBEDDED_API_KEY = secrets.token_hex(16)

BLUESKY_SPECS = [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]
JSON_SEQ_EXPORTER = {
    "BlueskyRun": {"application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"}
}


class CatalogError(RuntimeError):
    """The catalogue cannot be opened or written; the message says why and what to do."""


def catalog_config(
    root: str | Path, *, api_key: str | None = None, init: bool = True
) -> dict[str, Any]:
    """Tiled server configuration of an embedded catalogue in folder ``root``.

    The same keys as ``profiles/tiled/config.yml``: SQLite catalogue, a data
    folder and SQLite event tables as writable storage, the frames folder as
    readable storage, the Bluesky specs and the ``application/json-seq``
    exporter that ``run.documents()`` needs.

    Parameters
    ----------
    root : str or path
        The catalogue folder.
    api_key : str, optional
        The in-process server's API key (a random one by default).
    init : bool
        Create the database tables if they do not exist. Tiled does this in a
        subprocess that costs seconds, so an existing catalogue is opened with
        ``init=False``.
    """
    root = Path(root).resolve()
    return {
        "authentication": {"single_user_api_key": api_key or secrets.token_hex(16)},
        "catalog": {
            "uri": f"sqlite:///{root / CATALOG_DB}",
            "init_if_not_exists": init,
            "writable_storage": [str(root / "data"), f"sqlite:///{root / 'tables.db'}"],
            "readable_storage": [str(root / "frames")],
            "specs": BLUESKY_SPECS,
        },
        "media_types": JSON_SEQ_EXPORTER,
    }


def _check_writable(root: Path) -> None:
    try:
        for sub in ("data", "frames"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        probe = root / "frames" / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CatalogError(
            f"Cannot write the catalogue at {root} ({err.strerror or err}); "
            "choose a folder you can write to."
        ) from None


def _is_catalog(root: Path) -> bool:
    return (root / CATALOG_DB).is_file()


def _check_embedded_location(root: Path, *, create: bool) -> bool:
    """Refuse a location that is not a catalogue and may not become one; True if it is new."""
    if _is_catalog(root):
        return False
    if root.is_file():
        hint = " give the folder that holds it" if root.name == CATALOG_DB else ""
        raise CatalogError(
            f"{root} is a file, not a catalogue folder;{hint or ' give a catalogue folder'}."
        )
    if root.is_dir() and any(root.iterdir()):
        raise CatalogError(
            f"{root} is a folder but not a catalogue (it has no {CATALOG_DB}); give the "
            "catalogue's folder, or a new or empty folder with --create (create=True)."
        )
    if not create:
        raise CatalogError(
            f"There is no catalogue at {root}; check the path, or pass --create "
            "(create=True) to make a new, empty catalogue there."
        )
    return True


def _open_embedded(root: Path, *, create: bool):
    from tiled.client import Context, from_context
    from tiled.server.app import build_app_from_config

    new = _check_embedded_location(root, create=create)
    if new:
        _check_writable(root)
    else:
        # a catalogue copied without its empty folders still opens; a read-only one too
        for sub in ("data", "frames"):
            with contextlib.suppress(OSError):
                (root / sub).mkdir(exist_ok=True)
    app = build_app_from_config(catalog_config(root, api_key=_EMBEDDED_API_KEY, init=new))
    context = Context.from_app(app)
    client = from_context(context)
    client.autofocus_frames_dir = root / "frames"
    client.autofocus_root = root
    return client


def _unreachable(url: str) -> CatalogError:
    return CatalogError(
        f"Cannot reach the catalogue server at {url}; check the URL and that "
        "`autofocus serve` (or `tiled serve`) is running."
    )


def _refused_key(url: str) -> CatalogError:
    return CatalogError(
        f"The catalogue server at {url} refused the API key; set {API_KEY_ENV} "
        "to the key the server was started with."
    )


def _open_server(url: str, api_key: str | None):
    import httpx

    # One quick request first: Tiled's client retries a dead address with back-off for
    # tens of seconds; a server that answers at all (even 401/404) is worth handing over.
    timeout = httpx.Timeout(SERVER_ANSWER_TIMEOUT_S, connect=SERVER_CONNECT_TIMEOUT_S)
    try:
        httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException as err:
        if isinstance(err, httpx.ConnectTimeout):
            raise _unreachable(url) from None
        raise CatalogError(
            f"The catalogue server at {url} accepted the connection but did not answer in "
            f"{SERVER_ANSWER_TIMEOUT_S:.0f} s; check that the server is healthy."
        ) from None
    except httpx.TransportError:
        raise _unreachable(url) from None

    from tiled.client import from_uri

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    try:
        client = from_uri(url, api_key=key)
        client.keys()[:1]  # an unauthenticated server answers the root but not a listing
    except httpx.TransportError:
        raise _unreachable(url) from None
    except RuntimeError as err:
        if "API key" not in str(err):
            raise
        raise _refused_key(url) from None
    except httpx.HTTPStatusError as err:
        if err.response.status_code in (401, 403):
            raise _refused_key(url) from None
        raise CatalogError(f"The catalogue server at {url} answered {err}.") from None
    frames = os.environ.get(FRAMES_DIR_ENV)
    client.autofocus_frames_dir = Path(frames) if frames else None
    client.autofocus_root = None
    return client


def _server_url(text: str) -> str | None:
    """``text`` if it is an http(s) URL with a host; None if it is no URL; refuse a bad one."""
    if "://" not in text:
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        return text
    raise CatalogError(
        f"{text!r} is not a catalogue server URL: give http://HOST:PORT or "
        "https://HOST:PORT (for example http://127.0.0.1:8000), or a folder path."
    )


def catalog_root(location: str | Path | None = None) -> Path | None:
    """The folder of the embedded catalogue ``location`` names; None for a server URL.

    Resolves the default location the way :func:`open_catalog` does, without
    opening anything (no Tiled import): the fast paths of the CLI use it.
    """
    if location is None:
        location = os.environ.get(CATALOG_ENV) or DEFAULT_LOCATION
    text = str(location)
    if _server_url(text) is not None:
        return None
    return Path(text).expanduser().resolve()


def open_catalog(
    location: str | Path | None = None, *, api_key: str | None = None, create: bool = False
):
    """Open a catalogue of Bluesky runs.

    Parameters
    ----------
    location : str or path, optional
        A catalogue folder (embedded catalogue), or the ``http(s)://`` URL of
        a Tiled server. Default: ``$AUTOFOCUS_CATALOG``, else
        ``./autofocus-data``.
    api_key : str, optional
        API key for a server; defaults to ``$TILED_API_KEY``.
    create : bool
        Make a new, empty catalogue if the folder does not exist or is empty.
        The default location is always created on first use; any other
        folder must already hold a catalogue unless ``create=True``.

    Returns
    -------
    CatalogOfBlueskyRuns
        The standard Tiled client: ``catalog[uid]`` is a ``BlueskyRun``.

    Raises
    ------
    CatalogError
        A URL that is not http(s) with a host, a folder that is not a
        catalogue (or does not exist, without ``create``), an unwritable new
        folder, a server that does not answer within a few seconds, or a
        refused API key; the message names the problem and the fix.
    """
    default = location is None
    if default:
        location = os.environ.get(CATALOG_ENV) or DEFAULT_LOCATION
    text = str(location)
    url = _server_url(text)
    if url is not None:
        return _open_server(url, api_key)
    return _open_embedded(Path(text).expanduser().resolve(), create=create or default)


def frames_dir_for(catalog) -> Path:
    """The folder where cameras must write HDF5 files so that ``catalog`` can serve them."""
    folder = getattr(catalog, "autofocus_frames_dir", None)
    if folder is None:
        raise CatalogError(
            f"No frames folder is known for this catalogue; set {FRAMES_DIR_ENV} to a folder "
            "listed in the server's readable_storage before opening it."
        )
    return Path(folder)


def subscribe_catalog(
    RE,
    catalog,
    cameras: Iterable[Any] = (),
    *,
    durable: bool = True,
    sync_interval_s: float | None = 0.0,
) -> int:
    """Stream every document of ``RE`` into ``catalog``; point ``cameras`` at its frames folder.

    Parameters
    ----------
    RE : bluesky.RunEngine
        The RunEngine to subscribe.
    catalog : CatalogOfBlueskyRuns
        From :func:`open_catalog`.
    cameras : iterable of devices
        Cameras whose ``write_dir`` is pointed at the catalogue's frames folder.
    durable : bool
        Journal every document (one locked JSON-lines file per run in
        ``running/``, synced to disk at every event) before Bluesky's batched
        catalogue writer sees it (default), so that a process killed mid-run loses at most the event
        being written and the run can be recovered and marked incomplete
        (:func:`autofocus_plans.durable.recover_runs`). ``False`` gives the
        batched writer alone: a killed process loses every event of its run.
    sync_interval_s : float or None
        Least seconds between disk syncs of the journal: 0 (default) syncs at
        every event, so that a power cut, too, loses at most one event; 1
        syncs at most once a second (for a slow or busy disk; a power cut then
        loses at most the last second).

    Returns
    -------
    int
        The RunEngine subscription token (``RE.unsubscribe(token)`` stops it).

    Notes
    -----
    Frames must reach the catalogue: a camera with a ``write_dir`` that a plan
    stages is pointed at the catalogue's frames folder before its first
    exposure (so cameras need not be named here), and a StreamResource or
    Resource naming a file outside that folder stops the run with
    :class:`~autofocus_plans.frames.FrameLocationError` (see ``frames``).

    Before subscribing, the runs of writers that died are recovered from their
    journals: every journaled event is written and a stop document with
    ``exit_status="fail"`` and the reason is added. Should the catalogue
    refuse documents mid-run, the run's journal is kept and the run is written
    from it by the next recovery (``durable=False``: the batched writer keeps
    them as JSON lines in ``unsaved-documents/`` beside the frames folder).
    """
    from .durable import DurableWriter, journal_dir_for, recover_runs
    from .frames import FrameLocationGuard, frames_to_catalog

    cameras = list(cameras)
    frames = getattr(catalog, "autofocus_frames_dir", None)
    if cameras:
        folder = frames_dir_for(catalog)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CatalogError(
                f"Cannot create the frames folder {folder} ({err.strerror or err}); "
                f"point {FRAMES_DIR_ENV} at a writable folder."
            ) from None
        for camera in cameras:
            camera.write_dir = folder
    # cameras not named here are pointed at the frames folder when a plan stages them,
    # before their first exposure; any other frame file outside it stops the run at once
    frames = Path(frames) if frames else None
    # one such preprocessor per RunEngine: the catalogue subscribed last decides
    RE.preprocessors[:] = [p for p in RE.preprocessors if not hasattr(p, "autofocus_frames_dir")]
    guard = frames_to_catalog(frames)
    guard.autofocus_frames_dir = frames
    RE.preprocessors.append(guard)
    if not durable:
        from bluesky.callbacks.tiled_writer import TiledWriter

        # if writing to the catalogue fails mid-run, the documents go to JSON-lines files
        backup = str(frames.parent / "unsaved-documents") if frames else None
        writer = TiledWriter(catalog, backup_directory=backup)
        return RE.subscribe(FrameLocationGuard(writer, frames))
    journals = journal_dir_for(catalog)
    recover_runs(catalog)  # a new writer starts: finish the runs of writers that died
    writer = DurableWriter(catalog, journal_dir=journals, sync_interval_s=sync_interval_s)
    return RE.subscribe(FrameLocationGuard(writer, frames))
