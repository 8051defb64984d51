"""The quantiser's heuristics: one switch each, and their thresholds (`data.quantize` in a config).

The heuristics are MahlerNet's (reference sections 2.2-2.6), each reworked where measurement
showed the original wrong (docs/decisions.md, "Quantiser heuristics"). `QuantizeOptions.first()`
turns every one off: that is the first quantiser (nearest grid point, nearest duration class),
kept for comparison (bench/quantize_report.py).

Ticks here are score ticks, 480 per quarter note, as the original measured its windows in
fractions of the file's ticks per quarter (tpb/16 = 30, tpb/8 = 60).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantizeOptions:
    additive_metres: bool = True
    """5/4, 7/8, 15/8, 1/4, ...: bars of that many beats (the original dropped their notes)."""

    cluster_onsets: bool = True
    """Chord clustering per track: a note starting less than `cluster_window` after the first
    onset of a cluster joins it (humanised and staggered chords land on one grid point)."""
    cluster_window: int = 30
    """Score ticks (1/16 quarter, the original's tpb/16)."""

    coarse_grid: bool = True
    """Onsets snap to the 1/4 and 1/3 beat unless the 1/8 or 1/6 beat is meant: the source has
    the onset within `fine_tolerance_beats` of such a point, or its track plays faster there than
    `fast_gap_beats` between onsets. Without it, a part entering a few ticks late lands on the
    32nd point after the beat (about 9% of classical_multitrack's onsets)."""
    fine_tolerance_beats: float = 1 / 48
    fast_gap_beats: float = 0.2

    grace_to_downbeat: bool = True
    """Notes starting less than `grace_window` before a time-signature change belong to the new
    metre's first downbeat (the original gave them a bar of their own, so every later bar was late)."""
    grace_window: int = 60
    """Score ticks (1/8 quarter)."""

    legato_repair: bool = True
    """A note ending just before the next onset of its track (a silence of at most
    `legato_fraction` of its length and under `legato_max_gap` ticks) is held to that onset.
    The original held every note shorter than two beats over any silence under a quarter, which
    turned staccato into legato. Only ends off the grid are held (what is written stays)."""
    legato_fraction: float = 0.35
    legato_max_gap: int = 120

    overlap_repair: bool = True
    """A note overlapping the next onset of its track by less than `overlap_fraction` of its
    length ends at that onset (legato playing, not a held note)."""
    overlap_fraction: float = 0.5

    gap_repair: Literal["minimal", "forward"] = "minimal"
    """An onset no sum of time classes reaches from its predecessor (a gap of 1/24, 1/12 or 5/24
    beat, where duple and triplet grids meet) is repaired by moving the one onset of the pair that
    costs least and is not on a beat ("minimal"), never the later music; "forward" moves the later
    onset onto the nearest reachable point, which can cascade (the first quantiser)."""

    rhythm_context: bool = True
    """A note on the triplet grid only (not the duple one) takes no duple-only duration with a d32
    or d16 part, and a note on the duple grid only takes no triplet duration (a triplet passage
    stays triplet). A note on both grids inherits the context of the note of its track that ends
    where it starts."""

    tempo_exclusions: bool = False
    """d32 (1/8 beat) durations only at slow tempi (under `slow_bpm`), d16 not at fast ones (over
    `fast_bpm`), as the original's tempo heuristics. Off by default: the representation has no
    tempo (pieces are written at 120 bpm), so a piece would not quantise to itself, and notated
    32nd notes at moderate tempi became 16ths."""
    slow_bpm: float = 66.7
    fast_bpm: float = 200.0

    instrument_exclusions: bool = True
    """No d32 durations for strings, guitar and timpani; no d16 for timpani (the original's list)."""

    unify_chords: bool = False
    """Notes starting together in one track take the majority duration of the chord when it is
    within a quarter of their own length (the original meant this but never counted votes).
    Off by default: it recovers no more of the written durations of humanised copies (within
    0.1 point on all three corpora, bench/RESULTS.md)."""

    max_instruments: int = 15
    """At most this many instrument classes sound at once (15 MIDI channels; 0: no limit). A note
    that would need a 16th is dropped and counted."""

    max_unquantisable_fraction: float = 0.05
    """A metre range that loses more than this fraction of its notes to the quantiser rejects the
    file, with the reason (the original's 5%)."""

    @classmethod
    def first(cls) -> "QuantizeOptions":
        """Every heuristic off: the first quantiser (for comparison)."""
        return cls(additive_metres=False, cluster_onsets=False, coarse_grid=False, grace_to_downbeat=False, legato_repair=False,
                   overlap_repair=False, gap_repair="forward", rhythm_context=False, tempo_exclusions=False,
                   instrument_exclusions=False, unify_chords=False, max_instruments=0,
                   max_unquantisable_fraction=1.0)

    def is_on(self, name: str) -> bool:
        return getattr(self, _check(name)) != getattr(QuantizeOptions.first(), name)

    def toggled(self, name: str) -> "QuantizeOptions":
        """These options with one heuristic switched: off if it is on, else on at its 'on' value
        (for ablations: bench/quantize_report.py)."""
        on = _ON_VALUES.get(_check(name), True)
        return dataclasses.replace(self, **{name: getattr(QuantizeOptions.first(), name) if self.is_on(name) else on})


def _check(name: str) -> str:
    if name not in SWITCHES:
        raise KeyError(f"no quantiser heuristic {name!r}; switches: {', '.join(SWITCHES)}")
    return name


#: The 'on' value of the switches that are not booleans.
_ON_VALUES = {"gap_repair": "minimal", "max_instruments": 15}

#: The switches (one per heuristic), in the order the quantiser applies them.
SWITCHES = ("additive_metres", "cluster_onsets", "coarse_grid", "grace_to_downbeat", "legato_repair", "overlap_repair",
            "gap_repair", "rhythm_context", "tempo_exclusions", "instrument_exclusions", "unify_chords",
            "max_instruments")

DEFAULT_OPTIONS = QuantizeOptions()
