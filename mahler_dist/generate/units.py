"""The original's unit syntax (reference 5.3): which bars of a piece seed a generation call.

A unit is "<index><c and/or z>", 0-based: `10cz`, `9z`, `3c`; "-" means none (unconditioned).
Index N is bar N of the piece: "c" takes its context (bar N-1, or the START row for the first bar
of a chunk) as the context to decode under, "z" encodes bar N (with that context) into the latent.
Units keep the order given (the original sorted them; the order is the output order here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mahler_dist.errors import MahlerError

_UNIT_RE = re.compile(r"^(\d{1,6})([cz]{1,2})$")


class UnitError(MahlerError):
    """A unit string is malformed or does not fit the piece or the mode; names the unit."""

    def __init__(self, unit: str, reason: str):
        self.unit, self.reason = unit, reason
        super().__init__(f"unit {unit!r}: {reason}")


@dataclass(frozen=True)
class Unit:
    """One parsed unit. `index` is None for "-" (no context, random z)."""

    text: str
    index: int | None
    ctx: bool
    z: bool

    @property
    def label(self) -> str:
        """For file names: the unit as written, "none" for "-"."""
        return "none" if self.index is None else self.text


NONE_UNIT = Unit("-", None, False, False)


def parse_unit(text: str) -> Unit:
    text = str(text).strip()
    if text == "-":
        return NONE_UNIT
    m = _UNIT_RE.match(text)
    if not m:
        raise UnitError(text, "expected '<bar index><c and/or z>' such as 10cz, 9z or 3c, or '-' for none")
    index, flags = int(m.group(1)), m.group(2)
    if len(set(flags)) != len(flags):
        raise UnitError(text, f"flag repeated in {flags!r}; use c, z or cz")
    return Unit(text, index, "c" in flags, "z" in flags)


def parse_units(texts: list[str] | tuple[str, ...] | None) -> list[Unit]:
    """Parse every unit; the first bad one raises UnitError naming it."""
    return [parse_unit(t) for t in (texts or [])]


def check_units(units: list[Unit], mode: str, num_bars: int | None) -> None:
    """Mode-specific rules, each failure naming the unit and the reason.

    `num_bars`: the bar count of the piece given with --file (None: no piece given).
    """
    for u in units:
        if u.index is None:
            if mode not in ("pred",):
                raise UnitError(u.text, f"'-' (no unit) is only meaningful for pred, not {mode}")
            continue
        if num_bars is None:
            raise UnitError(u.text, "a unit with an index needs --file PIECE")
        if u.index >= num_bars:
            raise UnitError(u.text, f"bar index {u.index} is past the piece's last bar "
                                    f"(it has {num_bars} bars, indices 0..{num_bars - 1})")
    if mode == "pred" and not units:
        raise UnitError("", "pred needs --units (use '-' for an unconditioned sample)")
    if mode == "recon":
        if not units:
            raise UnitError("", "recon needs --units with z, e.g. 0cz")
        for u in units:
            if not u.z:
                raise UnitError(u.text, "recon reconstructs a bar, so the unit needs z (e.g. "
                                        f"{u.index}z or {u.index}cz)")
    if mode == "intpol":
        zs = [u for u in units if u.z]
        cs = [u for u in units if not u.z]
        if len(zs) != 2:
            raise UnitError(" ".join(u.text for u in units),
                            f"intpol needs exactly two units with z (got {len(zs)})")
        if len(cs) > 1:
            raise UnitError(cs[1].text, "intpol takes at most one context-only unit")
    if mode == "n_pred":
        zs = [u for u in units if u.z]
        cs = [u for u in units if u.ctx and not u.z]
        if len(zs) > 1:
            raise UnitError(zs[1].text, "n_pred takes at most one unit with z (the z decoded "
                                        "under every context)")
        if not cs:
            raise UnitError(" ".join(u.text for u in units) or "",
                            "n_pred needs one or more context units such as 3c 7c")
