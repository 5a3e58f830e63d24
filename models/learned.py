"""Learned single-shot defocus regressors (torch) and their checkpoints.

A checkpoint is one ``.safetensors`` file: the weights (plain tensors, never
pickled) and, in its header, JSON metadata — the architecture, the
preprocessing, the optical configuration the model was trained for, the
training run uids and the validation figures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .compute import resolve_device
from .preprocessing import Preprocessing
from .uncertainty import Calibration, DefocusEstimate, sample_spectrum, view_corners

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "HEADS",
    "DefocusCNN",
    "DefocusModel",
    "FourierMLP",
    "ModelFileError",
    "load_model",
]

CHECKPOINT_FORMAT = "bluesky-autofocus-defocus-model"
CHECKPOINT_VERSION = "1"


class ModelFileError(ValueError):
    """A file is not a readable bluesky-autofocus model checkpoint."""


#: heads of :class:`DefocusCNN`: pooled features into a dense layer, or the soft-argmax
#: of a map over the correlation's lags
HEADS = ("pool", "locate")


class DefocusCNN(nn.Module):
    """Small CNN over two channels -> signed defocus.

    The channels are the normalised image and its log|FFT|, or for a pair of
    frames their cross-correlation and phase correlation
    (:class:`~models.preprocessing.Preprocessing`).

    ``head="pool"`` pools the features into a dense layer (single frames).
    ``head="locate"`` (pairs) keeps the network fully convolutional: it maps the
    correlation channels to a score at every lag (4 lags to a cell), and the
    answer is the score-weighted mean lag along the LEDs' axis (a soft argmax),
    times a learned gain. The sample's displacement between the two frames is
    what carries its defocus, so a net that can only say *where* the peak is
    cannot learn the training samples' look (their feature sizes, how their
    blur looks) as a cue for defocus: on sample families held out of training
    the error fell from 0.10-0.70 to 0.04-0.13 depths of field (bars at 20x:
    0.59 to 0.08; ``benchmarks/REPORT-issue11-lofo.md``).
    ``coordinates`` (pooled pairs of checkpoints before the locating head)
    appends coordinate channels (CoordConv).
    """

    def __init__(
        self, crop: int = 128, width: int = 16, coordinates: bool = False, head: str = "pool"
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Unknown DefocusCNN head {head!r}; choose one of {HEADS}.")
        self.head_kind = head
        self.coordinates = coordinates
        channels = 4 if coordinates else 2

        def block(cin: int, cout: int, k: int, stride: int = 2, dilation: int = 1) -> list:
            return [
                nn.Conv2d(
                    cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation
                ),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        if head == "locate":
            # two strided layers (a cell per 4 lags), then dilated ones that see ±30 cells:
            # enough to tell the displacement's peak from a periodic sample's side peaks
            self.features = nn.Sequential(
                *block(channels, width, 5),
                *block(width, width, 3),
                *block(width, width, 3, stride=1),
                *block(width, width, 3, stride=1, dilation=2),
                *block(width, width, 3, stride=1, dilation=4),
            )
            self.head = nn.Conv2d(width, 1, 3, padding=1)
            self.gain = nn.Parameter(torch.tensor(1.0))
            self.offset = nn.Parameter(torch.tensor(0.0))
            return
        self.features = nn.Sequential(
            *block(channels, width, 5),
            *block(width, 2 * width, 3),
            *block(2 * width, 4 * width, 3),
            *block(4 * width, 4 * width, 3),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * 16, 64),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coordinates:
            n, _, h, w = x.shape
            rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
            cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
            x = torch.cat([x, grid.expand(n, -1, -1, -1)], dim=1)
        if self.head_kind == "pool":
            return self.head(self.features(x)).squeeze(-1)
        scores = self.head(self.features(x))[:, 0]  # (n, rows, columns) of cells
        n, rows, columns = scores.shape
        weights = torch.softmax(scores.reshape(n, -1), dim=1).reshape(n, rows, columns)
        # each column's lag, zero at the middle column (Preprocessing centres zero lag)
        half = max(columns // 2, 1)
        lags = (torch.arange(columns, device=x.device, dtype=x.dtype) - columns // 2) / half
        return self.gain * (weights.sum(1) * lags).sum(-1) + self.offset


class FourierMLP(nn.Module):
    """Fully connected network on pooled log|FFT| features (the classic baseline)."""

    def __init__(self, features: int = 1024, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


ARCHITECTURES = ("DefocusCNN", "FourierMLP")


def _default_net_options(architecture: str, preprocessing: Preprocessing) -> dict[str, Any]:
    """Options of a new network: pairs get the locating head, single frames the pooled one."""
    if architecture != "DefocusCNN":
        return {}
    return {"head": "locate" if preprocessing.inputs == "pair" else "pool"}


def _legacy_net_options(architecture: str, preprocessing: Preprocessing) -> dict[str, Any]:
    """Options of a checkpoint written before they were recorded: pooled, CoordConv on pairs."""
    if architecture != "DefocusCNN":
        return {}
    return {"head": "pool", "coordinates": preprocessing.inputs == "pair"}


def _build(architecture: str, preprocessing: Preprocessing, options: dict[str, Any]) -> nn.Module:
    if architecture == "DefocusCNN":
        return DefocusCNN(crop=preprocessing.crop, **options)
    if architecture == "FourierMLP":
        return FourierMLP(features=preprocessing.fft_feature_count)
    raise ValueError(f"Unknown architecture {architecture!r}; choose one of {ARCHITECTURES}.")


class DefocusModel:
    """A trained defocus regressor: frames in, signed defocus ``z - z_focus`` (µm) out."""

    def __init__(
        self,
        architecture: str,
        preprocessing: Preprocessing | None = None,
        *,
        label_scale_um: float = 10.0,
        metadata: dict[str, Any] | None = None,
        net: nn.Module | None = None,
        net_options: dict[str, Any] | None = None,
    ) -> None:
        self.architecture = architecture
        self.preprocessing = preprocessing or Preprocessing()
        self.net_options = dict(
            _default_net_options(architecture, self.preprocessing)
            if net_options is None
            else net_options
        )
        self.net = (
            net if net is not None else _build(architecture, self.preprocessing, self.net_options)
        )
        self.label_scale_um = float(label_scale_um)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.path: Path | None = None
        self.file_sha256: str | None = None

    # -- inputs --------------------------------------------------------------------
    def inputs(
        self,
        frames: Sequence[np.ndarray] | np.ndarray,
        corners: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """Network inputs of ``frames``: centre crops, or crops at ``corners`` (training)."""
        prep = (
            self.preprocessing.channels
            if self.architecture == "DefocusCNN"
            else self.preprocessing.fft_features
        )
        corners = corners if corners is not None else [None] * len(frames)
        return torch.from_numpy(
            np.stack([prep(f, c) for f, c in zip(frames, corners, strict=True)])
        )

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the CPU unless :meth:`to` moved them)."""
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device = "auto") -> DefocusModel:
        """Move the network to ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``); returns self."""
        self.net.to(resolve_device(device))
        return self

    @property
    def shots(self) -> int:
        """Exposures per prediction: 1, or 2 for a model of frame pairs (see :attr:`patterns`)."""
        return 2 if self.preprocessing.inputs == "pair" else 1

    @property
    def patterns(self) -> tuple[str, ...]:
        """LED patterns of a prediction's exposures, as trained (empty when not recorded)."""
        return tuple(self.metadata.get("led_patterns", ()))

    def _batch(self, frames) -> tuple[np.ndarray, bool]:
        """``frames`` as a batch of model inputs, and whether it was one input."""
        frames = np.asarray(frames)
        single = frames.ndim == self.preprocessing.frame_ndim
        batch = frames[None] if single else frames
        if batch.ndim != self.preprocessing.frame_ndim + 1:
            kind = "frames (N, H, W)" if self.shots == 1 else "pairs of frames (N, 2, H, W)"
            raise ValueError(
                f"{self.name} predicts from {kind}, got an array of shape {frames.shape}."
            )
        return batch, single

    def predict(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Signed defocus in µm of each frame (``z - z_focus``), computed on :attr:`device`.

        A model of pairs (:attr:`shots` 2) takes pairs ``(2, H, W)`` or ``(N, 2, H, W)``.
        """
        batch, single = self._batch(frames)
        self.net.eval()
        with torch.inference_mode():
            out = self.net(self.inputs(batch).to(self.device)).cpu().numpy()
        out = out * self.label_scale_um
        return out[0] if single else out

    def predict_views(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Defocus in µm predicted from each view of each frame, shape ``(frames, views)``.

        The views are crops on a grid over the frame
        (:func:`~models.uncertainty.view_corners`), like the random crops the
        model was trained on.
        """
        batch, _ = self._batch(frames)
        corners = view_corners(batch.shape[-2:], self.preprocessing.crop)
        views = np.repeat(batch, len(corners), axis=0)
        self.net.eval()
        with torch.inference_mode():
            x = self.inputs(views, corners * len(batch)).to(self.device)
            out = self.net(x).cpu().numpy() * self.label_scale_um
        return out.reshape(len(batch), len(corners))

    def estimate(self, frame: np.ndarray) -> DefocusEstimate:
        """One frame's defocus: the mean over its views, their spread, the calibrated
        interval and how unlike the training frames the sample looks (``novelty``).

        The interval (``interval_um``, a half-width) and the novelty are ``nan``
        for a checkpoint without a calibration.
        """
        calibration = self.calibration
        return DefocusEstimate.from_views(
            self.predict_views(frame)[0],
            sample_spectrum(self.preprocessing.first(frame), self.preprocessing.crop)
            if calibration
            else None,
            calibration,
        )

    @property
    def calibration(self) -> Calibration | None:
        """The conformal calibration of :meth:`estimate`'s intervals, if the checkpoint has one."""
        stored = self.metadata.get("calibration")
        return Calibration.from_dict(stored) if stored else None

    @property
    def trained_range_um(self) -> tuple[float, float]:
        low, high = self.metadata.get(
            "trained_range_um", (-self.label_scale_um, self.label_scale_um)
        )
        return float(low), float(high)

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.architecture)

    # -- checkpoint ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "architecture": self.architecture,
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "label_scale_um": repr(self.label_scale_um),
            "net_options": json.dumps(self.net_options),
            "metadata": json.dumps(self.metadata),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path), metadata=header)
        self.path = path
        self.file_sha256 = _sha256(path)
        return path

    def __repr__(self) -> str:
        val = self.metadata.get("validation", {})
        mae = val.get("mae_um")
        return f"DefocusModel({self.architecture}, {self.name!r}" + (
            f", val MAE {mae:.2f} µm)" if mae is not None else ")"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | Path) -> DefocusModel:
    """Load a checkpoint written by :meth:`DefocusModel.save` (no pickle is ever read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}; train one with `autofocus train`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ModelFileError(
                    f"{path} is a safetensors file but not a bluesky-autofocus model "
                    "checkpoint; give a file written by `autofocus train`."
                )
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"{path} is not a readable bluesky-autofocus model checkpoint ({err}); "
            "give a .safetensors file written by `autofocus train`."
        ) from None
    if header.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(
            f"{path} has checkpoint version {header.get('version')!r}; this release reads "
            f"version {CHECKPOINT_VERSION}."
        )
    try:
        preprocessing = Preprocessing(**json.loads(header["preprocessing"]))
        options = (
            json.loads(header["net_options"])
            if "net_options" in header
            else _legacy_net_options(header["architecture"], preprocessing)
        )
        model = DefocusModel(
            header["architecture"],
            preprocessing,
            label_scale_um=float(header["label_scale_um"]),
            metadata=json.loads(header["metadata"]),
            net_options=options,
        )
        model.net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path} has a damaged model header or weights ({err}).") from None
    model.net.eval()
    model.path = path
    model.file_sha256 = _sha256(path)
    return model
