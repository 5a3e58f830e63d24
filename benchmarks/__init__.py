"""Measured figures of bluesky-autofocus: ``python -m benchmarks`` (see ``__main__``)."""
