"""Open the Databroker (Tiled) catalogue, embedded or on a server, and subscribe a RunEngine.

A filesystem path gives an *embedded* catalogue: a Tiled SQL catalogue
(SQLite) with its data folder, served in-process (no server to start). The
layout of such a folder::

    catalog.db     run metadata (SQLite)
    tables.db      event tables (SQLite)
    data/          other written data
    frames/        camera HDF5 files (readable storage: the catalogue serves them)

An ``http(s)://`` URL gives a client of a Tiled server; the API key comes
from the ``TILED_API_KEY`` environment variable (or the ``api_key``
argument) and the cameras write under ``AUTOFOCUS_FRAMES_DIR``, a folder
the server lists in its ``readable_storage``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "API_KEY_ENV",
    "FRAMES_DIR_ENV",
    "CatalogError",
    "catalog_config",
    "frames_dir_for",
    "open_catalog",
    "subscribe_catalog",
]

API_KEY_ENV = "TILED_API_KEY"
FRAMES_DIR_ENV = "AUTOFOCUS_FRAMES_DIR"
DEFAULT_LOCATION = "autofocus-data"

BLUESKY_SPECS = [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]
JSON_SEQ_EXPORTER = {
    "BlueskyRun": {"application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"}
}


class CatalogError(RuntimeError):
    """The catalogue cannot be opened or written; the message says why and what to do."""


def catalog_config(root: str | Path, *, api_key: str | None = None) -> dict[str, Any]:
    """Tiled server configuration of an embedded catalogue in folder ``root``.

    The same keys as ``profiles/tiled/config.yml``: SQLite catalogue, a data
    folder and SQLite event tables as writable storage, the frames folder as
    readable storage, the Bluesky specs and the ``application/json-seq``
    exporter that ``run.documents()`` needs.
    """
    root = Path(root).resolve()
    return {
        "authentication": {"single_user_api_key": api_key or secrets.token_hex(16)},
        "catalog": {
            "uri": f"sqlite:///{root / 'catalog.db'}",
            "init_if_not_exists": True,
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


def _open_embedded(root: Path):
    from tiled.client import Context, from_context
    from tiled.server.app import build_app_from_config

    _check_writable(root)
    app = build_app_from_config(catalog_config(root))
    context = Context.from_app(app)
    client = from_context(context)
    client.autofocus_frames_dir = root / "frames"
    return client


def _open_server(url: str, api_key: str | None):
    import httpx
    from tiled.client import from_uri

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    try:
        client = from_uri(url, api_key=key)
        client.keys()[:1]  # an unauthenticated server answers the root but not a listing
    except httpx.ConnectError:
        raise CatalogError(
            f"Cannot reach the catalogue server at {url}; check the URL and that "
            "`autofocus serve` (or `tiled serve`) is running."
        ) from None
    except RuntimeError as err:
        if "API key" not in str(err):
            raise
        raise CatalogError(
            f"The catalogue server at {url} refused the API key; set {API_KEY_ENV} "
            "to the key the server was started with."
        ) from None
    except httpx.HTTPStatusError as err:
        if err.response.status_code in (401, 403):
            raise CatalogError(
                f"The catalogue server at {url} refused the API key; set {API_KEY_ENV} "
                "to the key the server was started with."
            ) from None
        raise CatalogError(f"The catalogue server at {url} answered {err}.") from None
    frames = os.environ.get(FRAMES_DIR_ENV)
    client.autofocus_frames_dir = Path(frames) if frames else None
    return client


def open_catalog(location: str | Path | None = None, *, api_key: str | None = None):
    """Open a catalogue of Bluesky runs.

    Parameters
    ----------
    location : str or path, optional
        A folder for an embedded catalogue (created on first use; default
        ``./autofocus-data`` or ``$AUTOFOCUS_CATALOG``), or the ``http(s)://``
        URL of a Tiled server.
    api_key : str, optional
        API key for a server; defaults to ``$TILED_API_KEY``.

    Returns
    -------
    CatalogOfBlueskyRuns
        The standard Tiled client: ``catalog[uid]`` is a ``BlueskyRun``.
    """
    if location is None:
        location = os.environ.get("AUTOFOCUS_CATALOG", DEFAULT_LOCATION)
    text = str(location)
    if text.startswith(("http://", "https://")):
        return _open_server(text, api_key)
    return _open_embedded(Path(text).expanduser().resolve())


def frames_dir_for(catalog) -> Path:
    """The folder where cameras must write HDF5 files so that ``catalog`` can serve them."""
    folder = getattr(catalog, "autofocus_frames_dir", None)
    if folder is None:
        raise CatalogError(
            f"No frames folder is known for this catalogue; set {FRAMES_DIR_ENV} to a folder "
            "listed in the server's readable_storage before opening it."
        )
    return Path(folder)


def subscribe_catalog(RE, catalog, cameras: Iterable[Any] = ()) -> int:
    """Stream every document of ``RE`` into ``catalog``; point ``cameras`` at its frames folder.

    Returns the RunEngine subscription token (``RE.unsubscribe(token)`` stops it).
    Should the catalogue stop accepting documents mid-run, the writer keeps
    them as JSON lines in ``unsaved-documents/`` beside the frames folder.
    """
    from bluesky.callbacks.tiled_writer import TiledWriter

    cameras = list(cameras)
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
    # if writing to the catalogue fails mid-run, the documents go to JSON-lines files instead
    frames = getattr(catalog, "autofocus_frames_dir", None)
    backup = str(Path(frames).parent / "unsaved-documents") if frames else None
    return RE.subscribe(TiledWriter(catalog, backup_directory=backup))
