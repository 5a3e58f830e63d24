"""Where the learned models run: ``device="auto" | "cpu" | "cuda"``.

Importing this module does not import torch (the CLI reads :data:`DEVICES`
to build its options); :func:`resolve_device` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "resolve_device"]

#: The accepted values of every ``device`` argument and ``--device`` option.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device for ``device``: ``"auto"`` is a CUDA GPU when torch sees one, else the CPU.

    ``"cuda"`` (or ``"cuda:N"``) on a machine where torch sees no GPU is refused
    with the reason, rather than failing deep inside the first batch.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (or 'cuda:N'), got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"device={device!r} but torch {torch.__version__} ({build}) sees no CUDA GPU on "
            "this machine: use device='cpu', or 'auto' to take a GPU only where there is one."
        )
    return torch.device(device)
