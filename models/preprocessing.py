"""One preprocessing path for defocus models, used identically in training and in plans.

numpy only: plans can prepare frames without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["INPUTS", "Preprocessing"]

#: what one prediction is made from: one frame, or a pair under two mirrored off-axis LEDs
INPUTS = ("frame", "pair")


def _centred_correlation(
    a: np.ndarray, b: np.ndarray, lags: int, whiten: bool = False
) -> np.ndarray:
    """Linear cross-correlation ``c[d] = sum a(x) b(x + d)`` at lags within ±``lags // 2``.

    ``(lags, lags)``, zero lag at ``[lags // 2, lags // 2]`` (where a centred
    FFT has its zero frequency), scaled so that its largest magnitude is 1:
    the sample's brightness and contrast drop out, the shape stays. ``whiten``
    divides the cross-power spectrum by its magnitude (plus the median
    magnitude, so noise-only frequencies stay small): a phase correlation, whose
    peak is sharp whatever the sample's own spectrum.
    """
    crop = a.shape[-1]
    size = (2 * crop, 2 * crop)  # zero-padded: no wrap-around
    spectrum = np.conj(np.fft.rfft2(a, s=size)) * np.fft.rfft2(b, s=size)
    if whiten:
        magnitude = np.abs(spectrum)
        spectrum = spectrum / (magnitude + np.median(magnitude))
    full = np.fft.fftshift(np.fft.irfft2(spectrum, s=size))
    window = full[crop - lags // 2 : crop + lags // 2, crop - lags // 2 : crop + lags // 2]
    peak = float(np.max(np.abs(window)))
    return (window / peak if peak > 0 else window).astype(np.float32)


@dataclass(frozen=True)
class Preprocessing:
    """Centre crop, brightness normalisation, and the network's input channels.

    ``image``: the crop divided by its mean, minus 1 (relative contrast, so the
    exposure time and LED brightness do not matter). ``log_fft``: log of the
    magnitude of the centred 2-D FFT of that, standardised per frame.
    ``fft_features``: ``log_fft`` average-pooled by ``fft_pool`` and flattened
    (the input of the fully connected baseline).

    ``inputs="pair"``: a prediction is made from two frames ``(2, H, W)`` taken
    under two mirrored off-axis LEDs. A sample ``dz`` from focus appears
    displaced between them by a distance proportional to ``dz`` whatever the
    sample, so the CNN sees that displacement directly: its channels are the
    cross-correlation of the two (tapered) crops and their phase correlation,
    at lags within ±``lags / 2`` pixels. The fully connected baseline gets both
    frames' pooled log|FFT|.
    """

    crop: int = 128
    fft_pool: int = 4
    inputs: str = "frame"
    lags: int = 128

    def __post_init__(self) -> None:
        if self.crop < 16 or self.crop % self.fft_pool:
            raise ValueError(
                f"Preprocessing crop must be >= 16 and a multiple of fft_pool "
                f"({self.fft_pool}), got crop={self.crop}."
            )
        if self.inputs == "pair" and not 16 <= self.lags <= self.crop:
            raise ValueError(
                f"Preprocessing lags (the correlation map's side) must be from 16 to the crop "
                f"({self.crop}), got {self.lags}."
            )
        if self.inputs not in INPUTS:
            raise ValueError(f"Preprocessing inputs must be one of {INPUTS}, got {self.inputs!r}.")

    @classmethod
    def default_for(cls, frames: np.ndarray) -> Preprocessing:
        """The default for a training set: frames ``(N, H, W)`` or pairs ``(N, 2, H, W)``.

        Pairs get a larger crop (up to 192 pixels): far from focus the two frames are
        displaced by tens of pixels and a larger crop keeps more of them overlapping.
        """
        if frames.ndim != 4:
            return cls()
        crop = min(192, min(frames.shape[-2:]) // 16 * 16)
        return cls(crop=max(crop, 16), inputs="pair", lags=min(128, max(crop, 16)))

    @property
    def frame_ndim(self) -> int:
        """Dimensions of one prediction's input: 2 (a frame) or 3 (a pair of frames)."""
        return 2 if self.inputs == "frame" else 3

    @property
    def centred_channels(self) -> tuple[int, ...]:
        """Channels whose origin sits at the middle row (a flip must roll them back by one)."""
        return (1,) if self.inputs == "frame" else (0, 1)

    @property
    def signed_channels(self) -> tuple[int, ...]:
        """Channels that change sign when one frame of a pair inverts its contrast."""
        return () if self.inputs == "frame" else (0, 1)

    def first(self, frame: ArrayLike) -> np.ndarray:
        """The frame itself, or the first of a pair (for per-sample figures)."""
        a = np.asarray(frame)
        return a[0] if self.inputs == "pair" and a.ndim == 3 else a

    def _crop(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        a = np.asarray(frame, dtype=np.float32)
        if a.ndim != self.frame_ndim or (self.inputs == "pair" and a.shape[0] != 2):
            expected = "a 2-D frame" if self.inputs == "frame" else "a pair of frames (2, H, W)"
            raise ValueError(
                f"This defocus model predicts from {expected}, got an array of shape {a.shape}."
            )
        if min(a.shape[-2:]) < self.crop:
            raise ValueError(
                f"A defocus model needs frames of at least {self.crop}x{self.crop} "
                f"pixels, got shape {a.shape[-2:]}; enlarge the camera ROI."
            )
        if at is None:  # inference: the centre
            at = ((a.shape[-2] - self.crop) // 2, (a.shape[-1] - self.crop) // 2)
        y0, x0 = at
        return a[..., y0 : y0 + self.crop, x0 : x0 + self.crop]

    def random_corner(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of a random crop (training augmentation: new views, same label)."""
        return (
            int(rng.integers(0, shape[-2] - self.crop + 1)),
            int(rng.integers(0, shape[-1] - self.crop + 1)),
        )

    def image(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        """The normalised crop (of each frame of a pair)."""
        a = self._crop(frame, at)
        mean = a.mean(axis=(-2, -1), keepdims=True)
        if np.any(mean <= 0):
            raise ValueError("A defocus model got a frame with no light (mean <= 0).")
        return a / mean - 1.0

    def log_fft(self, image: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image)))
        logs = np.log(spectrum + 1e-3)
        return ((logs - logs.mean()) / (logs.std() + 1e-6)).astype(np.float32)

    def channels(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        """``(2, crop, crop)`` float32: the CNN's input channels (see the class docstring)."""
        image = self.image(frame, at)
        if self.inputs == "frame":
            return np.stack([image, self.log_fft(image)]).astype(np.float32)
        # tapered: the crop's edges would otherwise correlate as structure at every lag
        taper = np.sqrt(np.outer(np.hanning(self.crop), np.hanning(self.crop)))
        a, b = ((x - x.mean()) * taper for x in image)
        return np.stack(
            [
                _centred_correlation(a, b, self.lags),
                _centred_correlation(a, b, self.lags, whiten=True),
            ]
        )

    def fft_features(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        image = self.image(frame, at)
        n, p = self.crop // self.fft_pool, self.fft_pool
        pooled = [
            self.log_fft(x).reshape(n, p, n, p).mean(axis=(1, 3)).ravel()
            for x in (image if self.inputs == "pair" else [image])
        ]
        return np.concatenate(pooled).astype(np.float32)

    @property
    def fft_feature_count(self) -> int:
        return (1 + (self.inputs == "pair")) * (self.crop // self.fft_pool) ** 2

    def to_dict(self) -> dict:
        return asdict(self)
