"""The original's unit syntax (reference 5.3) and the errors that say what is wrong."""

from __future__ import annotations

import pytest

from mahler_dist.errors import MahlerError
from mahler_dist.generate.units import NONE_UNIT, Unit, UnitError, check_units, parse_unit, parse_units


@pytest.mark.parametrize("text, index, ctx, z", [
    ("10cz", 10, True, True), ("9z", 9, False, True), ("3c", 3, True, False), ("0zc", 0, True, True),
    (" 7c ", 7, True, False),
])
def test_parse(text, index, ctx, z):
    u = parse_unit(text)
    assert (u.index, u.ctx, u.z) == (index, ctx, z)
    assert u.label == text.strip()


def test_none_unit():
    assert parse_unit("-") is NONE_UNIT and NONE_UNIT.label == "none" and NONE_UNIT.index is None


@pytest.mark.parametrize("text, reason", [
    ("", "expected"), ("c", "expected"), ("10", "expected"), ("10x", "expected"), ("-1z", "expected"),
    ("1.5z", "expected"), ("10ccz", "expected"), ("10cc", "repeated"), ("z10", "expected"),
])
def test_bad_syntax_names_the_unit(text, reason):
    with pytest.raises(UnitError, match=reason) as e:
        parse_unit(text)
    assert repr(text.strip()) in str(e.value)
    assert isinstance(e.value, MahlerError)


def test_parse_units_stops_at_the_first_bad_one():
    assert [u.text for u in parse_units(["1c", "2z"])] == ["1c", "2z"]
    assert parse_units(None) == []
    with pytest.raises(UnitError, match="'2q'"):
        parse_units(["1c", "2q", "3z"])


def _units(*texts):
    return [parse_unit(t) for t in texts]


@pytest.mark.parametrize("mode, units, bars, message", [
    ("pred", ("12c",), 12, "past the piece's last bar .*12 bars, indices 0..11"),
    ("pred", ("3c",), None, "needs --file"),
    ("pred", (), None, "needs --units"),
    ("recon", ("3c",), 12, "needs z"),
    ("recon", ("-",), 12, "only meaningful for pred"),
    ("recon", (), 12, "needs --units"),
    ("intpol", ("1z",), 12, "exactly two units with z"),
    ("intpol", ("1z", "2z", "3z"), 12, "exactly two"),
    ("intpol", ("1z", "2z", "3c", "4c"), 12, "at most one context-only unit"),
    ("n_pred", ("1z", "2z", "3c"), 12, "at most one unit with z"),
    ("n_pred", ("1z",), 12, "needs one or more context units"),
])
def test_mode_rules(mode, units, bars, message):
    with pytest.raises(UnitError, match=message):
        check_units(_units(*units), mode, bars)


@pytest.mark.parametrize("mode, units", [
    ("pred", ("-",)), ("pred", ("-", "0c", "11cz")), ("recon", ("0z", "11cz")),
    ("intpol", ("1z", "5cz")), ("intpol", ("1z", "5cz", "3c")), ("n_pred", ("1c", "4c")),
    ("n_pred", ("1c", "4c", "7z")),
])
def test_valid_calls(mode, units):
    check_units(_units(*units), mode, 12)


def test_unit_is_a_value():
    assert parse_unit("3cz") == Unit("3cz", 3, True, True)
