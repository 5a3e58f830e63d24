"""Frames that reach the catalogue: cameras write where it can serve, or the run stops early.

A Tiled catalogue serves externally written files (the cameras' HDF5 frames)
only from its ``readable_storage`` folders; anything else is refused when the
frames are *read*, long after the run, when the files may be gone. Two checks
move that failure to the start of the run:

- :func:`frames_to_catalog` (a RunEngine preprocessor): when a plan stages a
  device with a ``write_dir`` (our cameras) outside the catalogue's frames
  folder, the device is pointed at that folder before its first exposure, so
  ``subscribe_catalog(RE, catalog)`` without naming the cameras works. With no
  frames folder known (a server client without ``AUTOFOCUS_FRAMES_DIR``), the
  stage is refused, again before any exposure.
- :class:`FrameLocationGuard` (wraps the catalogue writer): any other detector
  whose StreamResource/Resource names a file outside the frames folder stops
  the run at its first such document, with one sentence and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FrameLocationGuard", "frame_file", "frames_to_catalog", "is_inside"]

logger = logging.getLogger(__name__)

FRAMES_DIR_ENV = "AUTOFOCUS_FRAMES_DIR"


class FrameLocationError(RuntimeError):
    """A frame file would land where the catalogue cannot serve it."""


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True if ``path`` is ``folder`` or below it (both resolved, symlinks followed)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def frame_file(name: str, doc: dict) -> Path | None:
    """The local file a StreamResource or Resource document points at; None for other documents."""
    if name == "stream_resource":
        uri = doc.get("uri", "")
        parts = urlsplit(uri)
        if parts.scheme != "file":
            return None  # not a file (e.g. a service); nothing to check here
        return Path(unquote(parts.path))
    if name == "resource":
        root, relative = doc.get("root", ""), doc.get("resource_path", "")
        return Path(root or "/") / relative
    return None


def _no_folder_message(what: str) -> str:
    return (
        f"{what}, but no frames folder is known for this catalogue; set {FRAMES_DIR_ENV} to "
        "the folder the server lists in readable_storage before open_catalog(), or name the "
        "cameras: subscribe_catalog(RE, catalog, cameras=[...])."
    )


class FrameLocationGuard:
    """RunEngine callback: refuse a frame file outside ``frames_dir``, then pass every document on.

    Parameters
    ----------
    writer : callable
        The catalogue writer (``DurableWriter`` or ``TiledWriter``).
    frames_dir : path or None
        The catalogue's readable frames folder; None when it is not known.
    """

    def __init__(self, writer: Callable[[str, dict], None], frames_dir: Path | None):
        self.writer, self.frames_dir = writer, frames_dir

    def __call__(self, name: str, doc: dict) -> None:
        path = frame_file(name, doc)
        if path is not None:
            key = doc.get("data_key") or doc.get("spec") or "a detector"
            if self.frames_dir is None:
                raise FrameLocationError(_no_folder_message(f"{key} writes frames to {path}"))
            if not is_inside(path, self.frames_dir):
                raise FrameLocationError(
                    f"{key} writes frames to {path}, outside the catalogue's readable frames "
                    f"folder {self.frames_dir}, so the catalogue could never serve them; write "
                    f"them under {self.frames_dir} (subscribe_catalog(RE, catalog, "
                    "cameras=[...]) points our cameras there)."
                )
        self.writer(name, doc)


def frames_to_catalog(frames_dir: Path | None):
    """A RunEngine preprocessor pointing staged cameras (``write_dir``) at ``frames_dir``.

    Append the returned function to ``RE.preprocessors``.
    """
    from bluesky.preprocessors import plan_mutator

    def check(msg):
        device = msg.obj
        write_dir = getattr(device, "write_dir", None) if msg.command == "stage" else None
        if write_dir is None:
            return None, None
        name = getattr(device, "name", "a camera")
        if frames_dir is None:
            raise FrameLocationError(_no_folder_message(f"Camera {name} writes frames"))
        if not is_inside(write_dir, frames_dir):
            logger.info(
                "Camera %s wrote frames to %s, which the catalogue cannot serve; it now writes "
                "them to the catalogue's frames folder %s.",
                name,
                write_dir,
                frames_dir,
            )
            device.write_dir = Path(frames_dir)
        return None, None

    def preprocessor(plan):
        return (yield from plan_mutator(plan, check))

    return preprocessor
