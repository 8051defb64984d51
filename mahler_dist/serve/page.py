"""The web page at `/`: one self-contained HTML file (no external assets), shipped in the package."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def page_html() -> str:
    return resources.files("mahler_dist.serve").joinpath("static/index.html").read_text(encoding="utf-8")
