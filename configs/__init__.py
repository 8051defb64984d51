"""The presets, installed as the package `mahler_dist.configs` (see pyproject.toml).

This file makes the folder a regular package, so importlib.resources gives a real directory
both from a plain install and from the editable one (`pip install -e .`).
"""
