"""The time-class and metre tables against reference sections 1.2 and 1.3."""

from fractions import Fraction as F

import pytest

from mahler_dist.music.timing import (
    CLASS_TICKS,
    NUM_TIME_CLASSES,
    TIME_CLASSES,
    Metre,
    UnsupportedMetre,
    allowed_mask,
    beat_position,
    decompose_gap,
    duration_mask,
    normalise_metre,
)

# Reference 1.2, column "beats", in class order.
REFERENCE_BEATS = [
    F(0), F(1, 8), F(1, 6), F(1, 4), F(1, 3), F(3, 8), F(1, 2), F(5, 8), F(2, 3), F(3, 4),
    F(5, 6), F(7, 8), F(1), F(9, 8), F(7, 6), F(5, 4), F(4, 3), F(11, 8), F(3, 2), F(13, 8),
    F(5, 3), F(7, 4), F(11, 6), F(15, 8), F(2), F(17, 8), F(13, 6), F(9, 4), F(7, 3), F(19, 8),
    F(5, 2), F(21, 8), F(8, 3), F(11, 4), F(17, 6), F(23, 8), F(3), F(25, 8), F(19, 6), F(13, 4),
    F(10, 3), F(27, 8), F(7, 2), F(29, 8), F(11, 3), F(15, 4), F(23, 6), F(31, 8), F(4), F(33, 8),
    F(25, 6), F(17, 4), F(13, 3), F(35, 8), F(9, 2), F(37, 8), F(14, 3), F(19, 4), F(29, 6), F(39, 8),
]
EXCLUDED_AS_DURATION = {11, 17, 19, 23, 29, 31, 35, 41, 46, 47, 53, 55, 57, 58, 59}


def test_sixty_classes_with_the_reference_beats_and_ticks():
    assert NUM_TIME_CLASSES == 60
    assert [c.beats for c in TIME_CLASSES] == REFERENCE_BEATS
    assert list(CLASS_TICKS) == [int(b * 480) for b in REFERENCE_BEATS]
    assert CLASS_TICKS[-1] == 2340


def test_classes_are_sorted_and_distinct():
    assert all(a < b for a, b in zip(CLASS_TICKS, CLASS_TICKS[1:]))


def test_excluded_classes_and_frequency_prior():
    assert {c.index for c in TIME_CLASSES if not c.as_duration} == EXCLUDED_AS_DURATION
    assert [c.freq for c in TIME_CLASSES[:13]] == [0, 0, 1, 0, 1, 1, 0, 2, 1, 1, 8, 3, 0]
    assert TIME_CLASSES[46].freq == 14


def test_triple_metre_classes_are_the_even_ones():
    assert [c.index for c in TIME_CLASSES if c.triple] == list(range(0, 60, 2))


@pytest.mark.parametrize(
    "signature, count, last",
    [((4, 4), 60, 59), ((3, 4), 48, 47), ((2, 4), 36, 35), ((6, 8), 18, 34), ((9, 8), 24, 46), ((12, 8), 30, 58)],
)
def test_allowed_classes_per_metre(signature, count, last):
    mask = allowed_mask(normalise_metre(*signature))
    assert mask.sum() == count
    assert max(i for i, ok in enumerate(mask) if ok) == last


def test_duration_mask_excludes_class_zero_and_the_excluded():
    mask = duration_mask(Metre(4, 4))
    assert not mask[0]
    assert not any(mask[i] for i in EXCLUDED_AS_DURATION)
    assert mask.sum() == 60 - 1 - len(EXCLUDED_AS_DURATION)


@pytest.mark.parametrize(
    "raw, normal, beats, scale",
    [((4, 4), (4, 4), 4, F(1)), ((8, 8), (4, 8), 4, F(1, 2)), ((2, 2), (2, 2), 2, F(2)),
     ((6, 8), (6, 8), 2, F(3, 2)), ((12, 8), (12, 8), 4, F(3, 2)), ((6, 4), (6, 4), 2, F(3)),
     ((3, 8), (3, 8), 3, F(1, 2)), ((24, 32), None, None, None), ((6, 16), (6, 16), 2, F(3, 4)), ((3, 16), (3, 16), 3, F(1, 4)), ((18, 8), (9, 8), 3, F(3, 2)),
     ((10, 4), (2, 4), 2, F(1))],
)
def test_metre_normalisation(raw, normal, beats, scale):
    if normal is None:
        with pytest.raises(UnsupportedMetre, match="denominator"):
            normalise_metre(*raw)
        return
    metre = normalise_metre(*raw)
    assert (metre.numerator, metre.denominator) == normal
    assert metre.beats_per_bar == beats
    assert metre.tick_scale == scale
    assert metre.bar_score_ticks == beats * 480 * scale


@pytest.mark.parametrize("raw", [(5, 4), (7, 8), (1, 4), (11, 8)])
def test_odd_metres_are_refused_with_a_reason_when_additive_metres_are_off(raw):
    with pytest.raises(UnsupportedMetre, match=f"{raw[0]}/{raw[1]}.*odd numerators.*additive_metres"):
        normalise_metre(*raw, additive=False)


@pytest.mark.parametrize(
    "raw, beats, scale, compound",
    [((5, 4), 5, F(1), False), ((7, 8), 7, F(1, 2), False), ((5, 8), 5, F(1, 2), False), ((7, 4), 7, F(1), False),
     ((1, 4), 1, F(1), False), ((13, 16), 13, F(1, 4), False), ((15, 8), 5, F(3, 2), True), ((21, 8), 7, F(3, 2), True)],
)
def test_additive_metres_are_bars_of_that_many_beats(raw, beats, scale, compound):
    metre = normalise_metre(*raw)
    assert metre.additive and metre.compound == compound
    assert metre.beats_per_bar == beats and metre.tick_scale == scale
    assert metre.bar_ticks == beats * 480
    # the original's rule for 3/4 (classes shorter than a bar plus a beat), so a 5- or 7-beat bar
    # allows every class the 4/4 bar does; a one-beat bar only those under two beats
    mask = allowed_mask(metre)
    assert [i for i, ok in enumerate(mask) if ok] == [
        c.index for c in TIME_CLASSES if c.beats < beats + 1 and (c.triple or not compound)]


def test_additive_bars_longer_than_the_cap_are_refused():
    with pytest.raises(UnsupportedMetre, match="more than 17 beats"):
        normalise_metre(19, 8)


def test_start_position_rules():
    c7 = TIME_CLASSES[7]   # d32+d8: start mod d8 = d8 - d32
    assert c7.start_ok(F(3, 8)) and not c7.start_ok(F(0)) and c7.start_ok(F(7, 8))
    c20 = TIME_CLASSES[20]  # t8+t2: the original rejected on-grid starts by mistake
    assert c20.start_ok(F(0)) and c20.start_ok(F(1, 3)) and not c20.start_ok(F(1, 2))
    assert TIME_CLASSES[12].start_ok(F(5, 24))  # no rule: any start


def test_gap_decomposition():
    m = Metre(4, 4)
    assert decompose_gap(0, m) == ()
    assert decompose_gap(480, m) == (12,)
    for gap in (20, 40, 100, 30):
        assert decompose_gap(gap, m) is None
    parts = decompose_gap(140, m)
    assert sum(CLASS_TICKS[p] for p in parts) == 140 and len(parts) == 2
    # compound metres have no d32/d16: a sixteenth gap is not expressible there
    assert decompose_gap(120, Metre(6, 8)) is None
    assert decompose_gap(240, Metre(6, 8)) == (6,)


def test_beat_position_marks_eighth_slots_only():
    assert [beat_position(t) for t in (0, 240, 480, 1680)] == [0, 1, 2, 7]
    assert beat_position(120) == -1 and beat_position(160) == -1 and beat_position(1920) == -1
