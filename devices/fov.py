"""Simulated field-of-view selector: an XY stage reduced to an index of sample regions."""

from __future__ import annotations

import numpy as np
from ophyd.sim import SynAxis
from ophyd.status import MoveStatus

from .samples import ProceduralSample
from .simulator import OpticalModel

__all__ = ["SimFieldOfView"]


class SimFieldOfView(SynAxis):
    """Moving to position ``k`` puts field of view ``k`` of the procedural sample under the lens.

    Each field is a new region of the same sample family (a new seed) whose
    focal plane lies up to ``focus_spread_um`` away from field 0's, as on a
    slide that is not perfectly flat. Real hardware uses an XY stage instead;
    plans only need a ``Movable``.
    """

    def __init__(
        self,
        model: OpticalModel,
        *,
        focus_spread_um: float = 10.0,
        name: str = "fov",
        **kwargs,
    ) -> None:
        self._model = model
        self.focus_spread_um = float(focus_spread_um)
        self.follow_sample()
        super().__init__(name=name, value=0, egu="field", precision=0, **kwargs)

    def follow_sample(self) -> None:
        """Take the sample now under the lens as field 0 (after ``SimMicroscope.set_sample``)."""
        sample = self._model.sample
        self._base_focus = self._model.focus.focus_um
        if isinstance(sample, ProceduralSample):
            self._family, self._seed = sample.family, sample.seed
            self._style = {"contrast": sample.contrast, "component": sample.component}
        else:
            self._family, self._seed, self._style = None, 0, {}

    def focus_offset_um(self, k: int) -> float:
        if k == 0:
            return 0.0
        rng = np.random.default_rng([self._seed, k, 7])
        return float(rng.uniform(-self.focus_spread_um, self.focus_spread_um))

    def set(self, value: float) -> MoveStatus:
        k = round(float(value))
        if self._family is None:
            raise ValueError(
                "Only a procedural sample has other fields of view; this microscope holds "
                f"{self._model.sample.label!r} (use SimMicroscope.set_sample to change it)."
            )
        if k < 0:
            raise ValueError(f"Field-of-view index must be >= 0, got {value!r}.")
        self._model.set_sample(ProceduralSample(self._family, self._seed + 7919 * k, **self._style))
        self._model.focus.focus_um = self._base_focus + self.focus_offset_um(k)
        return super().set(k)
