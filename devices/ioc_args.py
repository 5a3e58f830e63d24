"""Options of the microscope IOC, apart so that `autofocus --help` never imports caproto."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_ioc_arguments"]


def add_ioc_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``autofocus ioc`` (also used by ``python -m devices.ioc``)."""
    parser.add_argument("--prefix", default=os.environ.get("AUTOFOCUS_EPICS_PREFIX", "AF:"))
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (loopback)")
    parser.add_argument("--port", type=int, default=5064, help="CA server port (default 5064)")
    parser.add_argument(
        "--repeater-port", type=int, default=5065, help="CA repeater port, for beacons"
    )
    parser.add_argument("--sample", default="tissue", help="procedural sample family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--focus-um", type=float, default=12.3, help="hidden focal plane")
    parser.add_argument("--z-start-um", type=float, default=0.0)
    parser.add_argument("--size", type=int, default=256, help="sensor side in pixels")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiplies every delay; 0: instant"
    )
    parser.add_argument("--velocity", type=float, default=500.0, help="Z velocity, µm/s")
    parser.add_argument(
        "--z-limits", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH")
    )
