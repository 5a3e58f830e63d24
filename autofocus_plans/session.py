"""The interactive session around a RunEngine: a catalogue or no runs, and errors in one sentence.

Used by the IPython profile (``profiles/profile_autofocus/startup``); the
queueserver loads the same startup files and gets the catalogue guard too.

- :func:`connect_catalog` opens the catalogue and subscribes the RunEngine to
  it. When the catalogue cannot be opened it says so in one sentence and
  makes the RunEngine refuse every plan that starts a run, so nothing is
  measured that is recorded nowhere; a later successful call lifts the refusal.
- :func:`show_short_errors` makes IPython print the project's own errors (no
  focus found, catalogue problems, bad plan parameters, model files, moves
  outside the soft limits) as their one sentence, with ``%tb`` for the full
  traceback, a pause (Ctrl-C) as the RunEngine's options without a traceback,
  and turns the RunEngine's "Run aborted" log into one line.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg, RunEngineInterrupted

from .catalog import DEFAULT_LOCATION, CatalogError, open_catalog, subscribe_catalog
from .results import NoFocusFound

__all__ = ["UnrecordedRunRefused", "connect_catalog", "show_short_errors"]

# Folders whose ValueErrors are messages for the user (bad plan parameters, model files,
# moves outside soft limits), not bugs: the innermost frame of the traceback lies in one.
_OUR_PACKAGES = tuple(
    str(Path(__file__).resolve().parents[1] / name) + os.sep
    for name in ("autofocus_plans", "devices", "models")
)
_CONNECT_HINT = "catalog = connect_catalog(RE, 'FOLDER or URL', cameras=[camera])"


class UnrecordedRunRefused(CatalogError):
    """A plan tried to start a run while no catalogue records the RunEngine's documents."""


class _RefuseUnrecordedRuns:
    """RunEngine preprocessor: a plan's ``open_run`` raises instead of starting a run.

    The error is thrown into the plan at its ``open_run``, so the plan's own
    clean-up (unstaging, restoring the LED) runs before the RunEngine reports it.
    """

    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, plan):
        def refuse(msg: Msg):
            if msg.command != "open_run":
                return None, None

            def raise_refusal():
                raise UnrecordedRunRefused(
                    f"Run refused: nothing would record it, the catalogue {self.where} could "
                    f"not be opened; connect one with `{_CONNECT_HINT}`."
                )
                yield  # a generator, as plan_mutator expects

            return raise_refusal(), None

        return plan_mutator(plan, refuse)


# RunEngine -> token of the catalogue subscription connect_catalog made
_SUBSCRIPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lift_refusal(RE) -> None:
    RE.preprocessors[:] = [p for p in RE.preprocessors if not isinstance(p, _RefuseUnrecordedRuns)]


def connect_catalog(
    RE,
    location: str | Path | None = None,
    *,
    cameras: Iterable[Any] = (),
    **open_options: Any,
):
    """Open the catalogue and stream ``RE``'s documents into it; refuse runs when it can't.

    Parameters
    ----------
    RE : RunEngine
        The session's RunEngine.
    location : str or path, optional
        Catalogue folder or Tiled server URL (default ``$AUTOFOCUS_CATALOG`` or
        ``./autofocus-data``), as for :func:`autofocus_plans.open_catalog`.
    cameras : iterable of devices
        Cameras to point at the catalogue's frames folder.
    **open_options
        Passed on to :func:`autofocus_plans.open_catalog`, e.g. ``api_key`` of a server
        (default ``$TILED_API_KEY``).

    Returns
    -------
    catalog or None
        The catalogue, which replaces any that an earlier call connected.
        ``None`` when it could not be opened: one sentence says why, and unless
        an earlier call connected a catalogue (which then stays), every plan
        that starts a run is refused until a later call succeeds.
    """
    try:
        catalog = open_catalog(location, **open_options)
        token = subscribe_catalog(RE, catalog, cameras=cameras)
    except Exception as err:  # whatever the cause, the session must still come up
        where = location or os.environ.get("AUTOFOCUS_CATALOG") or DEFAULT_LOCATION
        reason = _sentence(err).rstrip(".")
        if RE in _SUBSCRIPTIONS:  # keep recording where it recorded before
            print(
                f"Catalogue {where} not connected, runs still go to the previous one: {reason}.",
                file=sys.stderr,
            )
            return None
        if not any(isinstance(p, _RefuseUnrecordedRuns) for p in RE.preprocessors):
            RE.preprocessors.append(_RefuseUnrecordedRuns(str(where)))
        print(
            f"No catalogue, so runs are refused until `{_CONNECT_HINT}` succeeds: {reason}.",
            file=sys.stderr,
        )
        return None
    if RE in _SUBSCRIPTIONS:  # one catalogue at a time: the new one replaces the old
        RE.unsubscribe(_SUBSCRIPTIONS[RE])
    _SUBSCRIPTIONS[RE] = token
    _lift_refusal(RE)
    return catalog


def _sentence(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    return text if isinstance(err, CatalogError) else f"{type(err).__name__}: {text}"


def _is_ours(value: BaseException, tb) -> bool:
    """Whether an exception is one of the project's messages to the user."""
    if isinstance(value, (NoFocusFound, CatalogError)):
        return True
    if not isinstance(value, ValueError) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_OUR_PACKAGES)


class _OneLineLog(logging.Formatter):
    """``bluesky: Run aborted (NoFocusFound)``: the record, not its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name.split('.')[0]}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            text += f" ({record.exc_info[0].__name__})"
        return text


def show_short_errors(shell=None) -> None:
    """Print the project's errors as one sentence in IPython (``%tb`` shows the traceback).

    Also gives the ``bluesky`` logger a one-line handler, so the RunEngine's
    "Run aborted" log stays but no longer repeats the traceback.
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        return
    previous_types, previous_handler = shell.custom_exceptions, shell.CustomTB

    def handler(self, etype, value, tb, tb_offset=None):
        if previous_types and isinstance(value, previous_types):
            return previous_handler(etype, value, tb, tb_offset=tb_offset)
        if isinstance(value, RunEngineInterrupted):  # a pause: its message is the whole story
            self._get_exc_info((etype, value, tb))
            print(str(value).strip(), file=sys.stderr)
            return None
        if not _is_ours(value, tb):
            self.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
            return None
        self._get_exc_info((etype, value, tb))  # remembered for %tb
        print(f"{etype.__name__}: {value}  (%tb for the traceback)", file=sys.stderr)
        return None

    shell.set_custom_exc((Exception,), handler)

    log = logging.getLogger("bluesky")
    if not any(isinstance(h.formatter, _OneLineLog) for h in log.handlers):
        one_line = logging.StreamHandler(sys.stderr)
        one_line.setLevel(logging.WARNING)
        one_line.setFormatter(_OneLineLog())
        log.addHandler(one_line)
