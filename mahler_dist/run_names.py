"""The one rule for run names (train, generate and serve): a run name becomes a folder name,
ROOT/runs/NAME, so it must be one plain path component on every filesystem we write to.

ASCII letters and digits first (no leading dot, dash or underscore: no hidden folder, nothing a
command line reads as an option), then letters, digits, '_', '-' and '.', at most 100 characters,
never "..". `fullmatch` because `re.match(...$)` also accepts a trailing newline.
"""

from __future__ import annotations

import re

from mahler_dist.errors import MahlerError

MAX_RUN_NAME = 100
RUN_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_RUN_NAME - 1}}}")


def check_run_name(name: object) -> str:
    """NAME if it is a valid run name, else a MahlerError that says why."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or ".." in name:
        raise MahlerError(f"invalid run name {name!r}: use ASCII letters, digits, '_', '-' and '.' "
                          f"(starting with a letter or digit, at most {MAX_RUN_NAME} characters, no '..')")
    return name
