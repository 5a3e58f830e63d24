"""Bluesky plans, the catalogue, replay and the CLI."""
