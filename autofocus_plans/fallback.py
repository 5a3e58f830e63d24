"""The Brenner search a one-shot plan falls back to when its estimate cannot be trusted."""

from __future__ import annotations

from .brenner import brenner_sweep, fast_focus
from .results import FocusResult
from .stubs import approach

__all__ = ["FALLBACKS", "check_fallback", "fall_back"]

#: What a one-shot plan may do when it cannot trust its estimate.
FALLBACKS = ("fast_focus", "brenner_sweep", "none")


def check_fallback(fallback: str) -> None:
    """Refuse an unknown ``fallback`` before anything moves."""
    if fallback not in FALLBACKS:
        raise ValueError(
            f"fallback must be 'fast_focus', 'brenner_sweep' or 'none', got {fallback!r}."
        )


def fall_back(
    camera,
    stage,
    led,
    first: FocusResult,
    *,
    fallback: str,
    reach_um: float,
    origin: float,
    approach_um: float,
    refusal: str,
    first_run_key: str,
    md: dict | None = None,
):
    """Back to ``origin``, then search ±``reach_um`` there with ``fallback``, as a run of its own.

    ``first`` is the result of the run that could not trust its estimate (its
    ``extra["reason"]`` says why). The search's start document names that run
    (``fallback_for``); its result is marked ``fell_back``, counts the
    exposures of both runs and keeps the first run's uid under
    ``first_run_key``. With ``fallback="none"`` it raises ``RuntimeError``
    with ``refusal`` and the reason instead, the stage back at ``origin``.
    """
    reason = first.extra.get("reason", "")
    yield from approach(stage, origin, approach_um)
    if fallback == "none":
        raise RuntimeError(f"{refusal}: {reason}.")
    search = fast_focus if fallback == "fast_focus" else brenner_sweep
    rescue = yield from search(
        camera, stage, led, -reach_um, reach_um, md={"fallback_for": first.run_uid, **(md or {})}
    )
    rescue.fell_back = True
    rescue.exposures += first.exposures
    rescue.extra = {first_run_key: first.run_uid, "reason": reason}
    return rescue
