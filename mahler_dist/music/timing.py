"""MahlerNet's 60 time classes and its metres (reference sections 1.2 and 1.3).

Offsets and durations share one vocabulary of 60 classes: tied combinations of the duple values
d1..d32 and the triplet values t1..t16, sorted by length in *beats*. A class index means a
different absolute note value in different metres, because the beat is rescaled per metre
(x/2: the half note; x/8 duple: the eighth; compound metres: the dotted beat).

Lossy by design: only onsets and durations that these classes (and sums of them) can express
survive quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np

from mahler_dist.errors import MahlerError
from mahler_dist.music.score import TICKS_PER_QUARTER

#: Model ticks per beat: class ticks are integers at this resolution (reference 1.2 column "ticks @480").
TICKS_PER_BEAT = 480

#: The eleven basic values in beats (reference 1.2).
BASIC_VALUES: dict[str, Fraction] = {
    "d1": Fraction(4), "d2": Fraction(2), "d4": Fraction(1), "d8": Fraction(1, 2),
    "d16": Fraction(1, 4), "d32": Fraction(1, 8),
    "t1": Fraction(8, 3), "t2": Fraction(4, 3), "t4": Fraction(2, 3), "t8": Fraction(1, 3),
    "t16": Fraction(1, 6),
}

# Reference 1.2, one line per class: tied parts | frequency class | start-position rule | usable
# as a quantised note duration.  A rule "d8:d32" reads "start mod d8 = d8 - d32"; "t8:0" is the
# class-20 rule, whose on-grid starts the original wrongly rejected (reference 9, item 12).
_TABLE = """
none 0 - y
d32 0 - y
t16 1 - y
d16 0 - y
t8 1 - y
d32+d16 1 - y
d8 0 - y
d32+d8 2 d8:d32 y
t4 1 - y
d16+d8 1 - y
t16+t4 8 t8:t16 y
d32+d16+d8 3 - n
d4 0 - y
d32+d4 2 d4:d32 y
t16+t8+t4 8 t8:t16 y
d16+d4 2 d4:d16 y
t8+d4 3 - y
d32+d16+d4 4 - n
d8+d4 1 - y
d32+d8+d4 4 - n
t8+t2 6 t8:0 y
d16+d8+d4 3 d8:d16 y
t16+t8+t2 10 d2:t16 y
d32+d16+d8+d4 5 - n
d2 0 - y
d32+d2 2 d2:d32 y
t16+t4+t2 8 d2:t16 y
d16+d2 2 d2:d16 y
t8+t4+t2 8 - y
d32+d16+d2 4 - n
d8+d2 2 - y
d32+d8+d2 4 - n
t1 8 d8:t16 y
d16+d8+d2 4 d8:d16 y
t16+t1 12 d8:t16 y
d32+d16+d8+d2 5 - n
d4+d2 1 - y
d32+d4+d2 4 d4:d32 y
t16+t8+t1 12 d4:t16 y
d16+d4+d2 4 d4:d16 y
t4+t1 12 d4:t8 y
d32+d16+d4+d2 5 - n
d8+d4+d2 3 - y
d32+d8+d4+d2 5 - y
t8+t4+t1 12 d8:t8 y
d16+d8+d4+d2 5 d8:d16 y
t16+t8+t4+t1 14 - n
d32+d16+d8+d4+d2 5 - n
d1 0 - y
d32+d1 2 d1:d32 y
t16+t2+t1 8 d4:t16 y
d16+d1 2 d1:d16 y
t8+t2+t1 8 d4:t8 y
d32+d16+d1 4 - n
d8+d1 2 d1:d8 y
d32+d8+d1 4 - n
t4+t2+t1 12 - y
d16+d8+d1 4 - n
t16+t4+t2+t1 12 - n
d32+d16+d8+d1 5 - n
"""


@dataclass(frozen=True)
class TimeClass:
    index: int
    parts: tuple[str, ...]          # tied basic values, smallest first; () for class 0
    beats: Fraction                 # length in beats
    freq: int                       # rarity prior for the quantiser (0 = plain value)
    start_rule: tuple[Fraction, Fraction] | None  # (modulus, remainder) in beats, or None
    as_duration: bool               # False: never chosen as a quantised note duration

    @property
    def ticks(self) -> int:
        return int(self.beats * TICKS_PER_BEAT)

    @property
    def triple(self) -> bool:
        """Allowed in compound metres: no duple-only part (d32, d16 or a lone odd combination)."""
        return all(p[0] == "t" or BASIC_VALUES[p] % Fraction(1, 2) == 0 for p in self.parts)

    @property
    def is_basic(self) -> bool:
        return len(self.parts) == 1

    def start_ok(self, position_beats: Fraction) -> bool:
        """Whether a note starting at `position_beats` (from the bar start) may take this class."""
        if self.start_rule is None:
            return True
        modulus, remainder = self.start_rule
        return position_beats % modulus == remainder % modulus


def _parse_table() -> tuple[TimeClass, ...]:
    classes = []
    for index, line in enumerate(l for l in _TABLE.strip().splitlines()):
        parts_s, freq_s, rule_s, dur_s = line.split()
        parts = () if parts_s == "none" else tuple(parts_s.split("+"))
        beats = sum((BASIC_VALUES[p] for p in parts), Fraction(0))
        rule = None
        if rule_s != "-":
            mod_s, sub_s = rule_s.split(":")
            modulus = BASIC_VALUES[mod_s]
            rule = (modulus, (modulus - (BASIC_VALUES[sub_s] if sub_s != "0" else 0)) % modulus)
        classes.append(TimeClass(index, parts, beats, int(freq_s), rule, dur_s == "y"))
    return tuple(classes)


TIME_CLASSES: tuple[TimeClass, ...] = _parse_table()
NUM_TIME_CLASSES = len(TIME_CLASSES)  # 60
#: Class -> model ticks (the 4/4 @ 480 table the original used for generation).
CLASS_TICKS = np.array([c.ticks for c in TIME_CLASSES], dtype=np.int64)
_TICKS_TO_CLASS = {int(t): i for i, t in enumerate(CLASS_TICKS)}


def class_of_ticks(ticks: int) -> int | None:
    """The class whose length is exactly `ticks` model ticks, or None."""
    return _TICKS_TO_CLASS.get(int(ticks))


class UnsupportedMetre(MahlerError):
    def __init__(self, numerator: int, denominator: int, reason: str):
        self.numerator, self.denominator = numerator, denominator
        super().__init__(f"unsupported metre {numerator}/{denominator}: {reason}")


@dataclass(frozen=True)
class Metre:
    """A normalised metre (reference 1.3) and what follows from it."""

    numerator: int
    denominator: int

    @property
    def compound(self) -> bool:
        """Counted in dotted beats: 6, 9 and 12 as in the original, and the additive 15 and 21."""
        return self.numerator % 3 == 0 and self.numerator > 3

    @property
    def additive(self) -> bool:
        """A metre the original rejected (5/4, 7/8, 15/8, 1/4, ...), modelled as a bar of that many beats."""
        return self.numerator not in (2, 3, 4, 6, 9, 12)

    @property
    def beats_per_bar(self) -> int:
        return self.numerator // 3 if self.compound else self.numerator

    @cached_property   # hot: every note's time conversion asks for it
    def tick_scale(self) -> Fraction:
        """Score ticks (480 per quarter) per model tick (480 per beat): the original's tpb multiplier."""
        return Fraction(4, self.denominator) * (3 if self.compound else 1)

    @cached_property
    def bar_ticks(self) -> int:
        """Bar length in model ticks."""
        return self.beats_per_bar * TICKS_PER_BEAT

    @cached_property
    def bar_score_ticks(self) -> int:
        """Bar length in score ticks (480 per quarter)."""
        return int(self.bar_ticks * self.tick_scale)

    def to_score_ticks(self, model_ticks):
        return model_ticks * self.tick_scale.numerator // self.tick_scale.denominator

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


#: The longest additive bar, in beats (17/16 occurs in piano-midi.de; longer ones are rejected).
MAX_ADDITIVE_BEATS = 17


def normalise_metre(numerator: int, denominator: int, additive: bool = True) -> Metre:
    """Map a MIDI time signature to a supported Metre, or raise UnsupportedMetre.

    Denominators 2, 4, 8 and 16 are accepted (16 is our addition: 6/16 and 3/16 are common in
    orchestral files, and every class is still a whole number of ticks there). The numerator is
    reduced to 12, 9, 6, 4 or 2 when it is a multiple of one (in that order; so 8/8 becomes 4/8);
    3 stays 3. The original rejected every other numerator. With `additive` (the default) they are
    bars of that many beats on the same beat grid (5/4: five quarter beats; 7/8: seven eighth
    beats; 15/8 and 21/8: five and seven dotted beats), up to MAX_ADDITIVE_BEATS beats; their
    classes are limited to "shorter than a bar plus one beat" as the original limits 3/4's.
    """
    if denominator not in (2, 4, 8, 16):
        raise UnsupportedMetre(numerator, denominator, "the denominator must be 2, 4, 8 or 16")
    if numerator <= 0:
        raise UnsupportedMetre(numerator, denominator, "the numerator must be positive")
    for base in (12, 9, 6, 4, 2):
        if numerator % base == 0:
            return Metre(base, denominator)
    if numerator == 3:
        return Metre(3, denominator)
    if not additive:
        raise UnsupportedMetre(numerator, denominator,
                               "odd numerators other than 3 and 9 are not modelled (data.quantize.additive_metres is off)")
    metre = Metre(numerator, denominator)
    if metre.beats_per_bar > MAX_ADDITIVE_BEATS:
        raise UnsupportedMetre(numerator, denominator, f"a bar of more than {MAX_ADDITIVE_BEATS} beats is not modelled")
    return metre


@lru_cache(maxsize=None)
def allowed_mask(metre: Metre) -> np.ndarray:
    """Classes usable as offsets in `metre`: shorter than a bar plus one beat; triplet-compatible
    only in compound metres. Class 0 is included. (Read-only array.)"""
    limit = metre.beats_per_bar + 1
    mask = np.array([c.beats < limit and (c.triple or not metre.compound) for c in TIME_CLASSES])
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=None)
def duration_mask(metre: Metre) -> np.ndarray:
    """Classes usable as quantised note durations in `metre` (allowed and not excluded, not 0)."""
    mask = allowed_mask(metre) & np.array([c.as_duration for c in TIME_CLASSES])
    mask[0] = False
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=None)
def allowed_classes(metre: Metre) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(allowed_mask(metre)))


def max_class(metre: Metre) -> int:
    return allowed_classes(metre)[-1]


@lru_cache(maxsize=65536)
def decompose_gap(gap: int, metre: Metre) -> tuple[int, ...] | None:
    """Split a time gap (model ticks, >= 0) into the fewest allowed non-zero classes.

    Used for pause rows: a gap that no single class expresses becomes pause rows plus an offset.
    Returns () for a zero gap and None when no sum of allowed classes equals the gap. Among the
    shortest decompositions the one whose first part is longest is returned (pauses fill towards
    the note, which keeps each part on a coarse grid).
    """
    if gap == 0:
        return ()
    values = [int(CLASS_TICKS[i]) for i in allowed_classes(metre) if i > 0]
    unit = 20  # every class is a multiple of 20 model ticks (1/24 beat)
    if gap % unit:
        return None
    n = gap // unit
    steps = [v // unit for v in values]
    # best[k] = (parts, first part index) for total k units; breadth-first by number of parts.
    INF = 10**9
    best = [INF] * (n + 1)
    choice = [-1] * (n + 1)
    best[0] = 0
    for k in range(1, n + 1):
        for j in range(len(steps) - 1, -1, -1):  # longest first so ties keep the longest part
            s = steps[j]
            if s <= k and best[k - s] + 1 < best[k]:
                best[k] = best[k - s] + 1
                choice[k] = j
    if best[n] >= INF:
        return None
    parts = []
    k = n
    while k:
        j = choice[k]
        parts.append(class_of_ticks(values[j]))
        k -= steps[j]
    return tuple(parts)


def beat_position(position_in_bar: int) -> int:
    """Beat feature (reference 1.1): the eighth-note slot 0..7 when the onset (model ticks from the
    bar start) lies exactly on one of the 8 eighth positions of a 4/4-sized bar, else -1."""
    eighth = TICKS_PER_BEAT // 2
    if position_in_bar % eighth == 0 and 0 <= position_in_bar < 8 * eighth:
        return position_in_bar // eighth
    return -1


assert TICKS_PER_QUARTER == TICKS_PER_BEAT  # 4/4 model ticks equal score ticks
