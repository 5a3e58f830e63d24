"""One preprocessing path for defocus models, used identically in training and in plans.

numpy only: plans can prepare frames without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """Centre crop, brightness normalisation and log|FFT|.

    ``image``: the crop divided by its mean, minus 1 (relative contrast, so the
    exposure time and LED brightness do not matter). ``log_fft``: log of the
    magnitude of the centred 2-D FFT of that, standardised per frame.
    ``fft_features``: ``log_fft`` average-pooled by ``fft_pool`` and flattened
    (the input of the fully connected baseline).
    """

    crop: int = 128
    fft_pool: int = 4

    def __post_init__(self) -> None:
        if self.crop < 16 or self.crop % self.fft_pool:
            raise ValueError(
                f"Preprocessing crop must be >= 16 and a multiple of fft_pool "
                f"({self.fft_pool}), got crop={self.crop}."
            )

    def _crop(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        a = np.asarray(frame, dtype=np.float32)
        if a.ndim != 2 or min(a.shape) < self.crop:
            raise ValueError(
                f"A defocus model needs a 2-D frame of at least {self.crop}x{self.crop} "
                f"pixels, got shape {a.shape}; enlarge the camera ROI."
            )
        if at is None:  # inference: the centre
            at = ((a.shape[0] - self.crop) // 2, (a.shape[1] - self.crop) // 2)
        y0, x0 = at
        return a[y0 : y0 + self.crop, x0 : x0 + self.crop]

    def random_corner(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of a random crop (training augmentation: new views, same label)."""
        return (
            int(rng.integers(0, shape[0] - self.crop + 1)),
            int(rng.integers(0, shape[1] - self.crop + 1)),
        )

    def image(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        a = self._crop(frame, at)
        mean = float(a.mean())
        if mean <= 0:
            raise ValueError("A defocus model got a frame with no light (mean <= 0).")
        return a / mean - 1.0

    def log_fft(self, image: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image)))
        logs = np.log(spectrum + 1e-3)
        return ((logs - logs.mean()) / (logs.std() + 1e-6)).astype(np.float32)

    def channels(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        """``(2, crop, crop)`` float32: the normalised image and its log|FFT|."""
        image = self.image(frame, at)
        return np.stack([image, self.log_fft(image)]).astype(np.float32)

    def fft_features(self, frame: ArrayLike, at: tuple[int, int] | None = None) -> np.ndarray:
        logs = self.log_fft(self.image(frame, at))
        n, p = self.crop // self.fft_pool, self.fft_pool
        return logs.reshape(n, p, n, p).mean(axis=(1, 3)).ravel().astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)
