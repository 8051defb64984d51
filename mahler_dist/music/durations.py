"""Note lengths -> duration classes (reference section 2.4 steps 1-3, 2.5), with exclusions.

The choice among the classes the metre and the note's start allow is the original's score,
|error| * (freq + 1) + 15 * freq, with an exact class always winning. Which classes a note may
take at all narrows with three of the original's heuristics, each a switch of QuantizeOptions:
its rhythmic context (duple or triplet grid), the tempo, and its instrument. Notes starting
together in a track then agree on the chord's majority duration (the original's unification,
with its vote counting fixed). Notes longer than the longest class become tied parts: up to the
bar line, whole bars, the rest (re-articulated, as in the original: lossy).
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from mahler_dist.music.instruments import INSTRUMENT_NAMES
from mahler_dist.music.quantize_options import QuantizeOptions
from mahler_dist.music.timing import CLASS_TICKS, TIME_CLASSES, Metre, duration_mask

UNIFIED = "duration unified with its chord"

#: Notes shorter than this many model ticks after tied-part splitting are dropped as a tail.
MIN_TAIL = 30

#: Kinds of class a note may be refused (bits of exclusions()): with a d32 part, a d16 part, a triplet part.
EXCLUDE_D32, EXCLUDE_D16, EXCLUDE_TRIPLET = 1, 2, 4
_CLASS_BITS = np.array([EXCLUDE_D32 * ("d32" in c.parts) | EXCLUDE_D16 * ("d16" in c.parts)
                        | EXCLUDE_TRIPLET * any(p[0] == "t" for p in c.parts) for c in TIME_CLASSES], dtype=np.int64)
_HAS_TRIPLET = (_CLASS_BITS & EXCLUDE_TRIPLET) != 0
#: Classes scored per note, nearest in length first (see choose_durations).
_WINDOW = 8
assert np.all(np.diff(CLASS_TICKS) > 0)   # the classes are sorted by length: a window is a neighbourhood
_FREQ = np.array([c.freq for c in TIME_CLASSES], dtype=np.float64)
# The original's tie-breaking, as scores too small to matter otherwise: a basic (single-part)
# value before a tied one, then a duple value before a triplet one.
_TIE_BREAK = 1e-6 * np.array([(not c.is_basic) * 2 + (c.index and _HAS_TRIPLET[c.index]) for c in TIME_CLASSES])

# The original's instrument heuristics (reference 2.4), by instrument class: no 1/8-beat
# durations on plucked strings (2), violin, viola, cello, contrabass, string ensemble and timpani
# (4-9); timpani also no 1/4-beat ones.
_NO_D32_CLASSES = [2, 4, 5, 6, 7, 8, 9]
_TIMPANI = [9]
assert [INSTRUMENT_NAMES[i] for i in (2, 9)] == ["plucked strings", "timpani"]


@lru_cache(maxsize=None)
def _start_allowed(metre: Metre) -> np.ndarray:
    """bool [bar_ticks/20, 60]: the duration classes `metre` and a start at each 20-tick position allow."""
    usable = duration_mask(metre)
    n = metre.bar_ticks // 20
    allowed = np.zeros((n, len(TIME_CLASSES)), dtype=bool)
    for k in range(n):
        beats = Fraction(k * 20, 480)
        allowed[k] = usable & np.array([c.start_ok(beats) for c in TIME_CLASSES])
    allowed.setflags(write=False)
    return allowed


def longest_duration(metre: Metre) -> int:
    return int(CLASS_TICKS[np.flatnonzero(duration_mask(metre))[-1]])


def choose_durations(pos_in_bar: np.ndarray, lengths: np.ndarray, metre: Metre,
                     excluded: np.ndarray | None = None) -> np.ndarray:
    """Duration class per note (model-tick lengths, float): an exact class wins, else the lowest
    original score among the allowed classes. `excluded` (int per note, EXCLUDE_* bits) narrows
    the choice of notes whose length is no class; a note it leaves without a class keeps the
    unnarrowed choice.

    Scores only the _WINDOW classes nearest in length (the original scored about six); a note
    whose best there might be beaten outside the window (every class scores at least its length
    error) is scored against all 60."""
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.int64)
    lo = np.clip(np.searchsorted(CLASS_TICKS, lengths) - _WINDOW // 2, 0, len(CLASS_TICKS) - _WINDOW)
    cand = lo[:, None] + np.arange(_WINDOW)                                       # [N, W]
    cls, best = _best(_start_allowed(metre)[(pos_in_bar // 20).astype(np.int64)[:, None], cand], cand, lengths,
                      None if excluded is None else excluded[:, None])
    outside = np.minimum(np.where(lo > 0, lengths - CLASS_TICKS[np.maximum(lo - 1, 0)], np.inf),
                         np.where(lo + _WINDOW < len(CLASS_TICKS),
                                  CLASS_TICKS[np.minimum(lo + _WINDOW, len(CLASS_TICKS) - 1)] - lengths, np.inf))
    full = best > outside
    if full.any():
        rows = np.flatnonzero(full)
        every = np.broadcast_to(np.arange(len(CLASS_TICKS)), (len(rows), len(CLASS_TICKS)))
        cls[rows], _ = _best(_start_allowed(metre)[(pos_in_bar[rows] // 20).astype(np.int64)], every, lengths[rows],
                             None if excluded is None else excluded[rows, None])
    return cls


def _best(ok: np.ndarray, cand: np.ndarray, lengths: np.ndarray, excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(class, score) of the best allowed candidate per row (ok, cand: [N, K])."""
    err = np.abs(CLASS_TICKS[cand] - lengths[:, None])
    unsure = np.zeros(len(cand), bool)
    if excluded is not None:
        # a length that is exactly an allowed class is as written (notated, or quantised already)
        narrowed = ok & ((_CLASS_BITS[cand] & excluded) == 0)
        exact = (ok & (err < 0.5)).any(axis=1)
        some = narrowed.any(axis=1)
        ok = np.where((some & ~exact)[:, None], narrowed, ok)
        unsure = ~some & ~exact     # unnarrowed here, but a narrowed class may lie outside the candidates
    score = err * (_FREQ[cand] + 1) + 15 * _FREQ[cand] + _TIE_BREAK[cand]
    score = np.where(ok, np.where(err < 0.5, -1.0, score), np.inf)
    k = np.argmin(score, axis=1)
    r = np.arange(len(cand))
    return cand[r, k], np.where(unsure, np.inf, score[r, k])


def exclusions(onsets: np.ndarray, lengths: np.ndarray, tracks: np.ndarray, instruments: np.ndarray,
               bpm: np.ndarray, metre: Metre, options: QuantizeOptions) -> np.ndarray | None:
    """int per note: EXCLUDE_* bits of the kinds of class it may not take (None: no heuristic on).

    onsets: model ticks from the range start (snapped); lengths: model ticks; bpm: quarter notes
    per minute at each note's start."""
    if not (options.rhythm_context or options.tempo_exclusions or options.instrument_exclusions):
        return None
    bits = np.zeros(len(onsets), np.int64)
    if options.rhythm_context and not metre.compound:
        triplet, duple = rhythm_context(onsets, lengths, tracks)
        bits |= np.where(triplet, EXCLUDE_D32 | EXCLUDE_D16, 0) | np.where(duple, EXCLUDE_TRIPLET, 0)
    if options.tempo_exclusions:
        bits |= np.where(bpm >= options.slow_bpm, EXCLUDE_D32, 0) | np.where(bpm > options.fast_bpm, EXCLUDE_D16, 0)
    if options.instrument_exclusions:
        bits |= np.where(np.isin(instruments, _NO_D32_CLASSES), EXCLUDE_D32, 0)
        bits |= np.where(np.isin(instruments, _TIMPANI), EXCLUDE_D16, 0)
    return bits


def rhythm_context(onsets: np.ndarray, lengths: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(triplet, duple) bool per note: on the 1/6-beat grid only, on the 1/8-beat grid only. A note
    on both (the beat, the half beat) takes the context of its track's note that ends where it
    starts (the original's per-track context), so the notes of a triplet run that fall on the
    beat stay triplet."""
    on_t, on_d = onsets % 80 == 0, onsets % 60 == 0
    triplet, duple = on_t & ~on_d, on_d & ~on_t
    either = ~(triplet | duple)
    if either.any() and (triplet.any() or duple.any()):
        order = np.lexsort((onsets, tracks))
        t, o, e = tracks[order], onsets[order], (onsets + lengths)[order]
        prev_ends_here = np.zeros(len(order), bool)
        prev_ends_here[1:] = (t[1:] == t[:-1]) & (np.abs(e[:-1] - o[1:]) < 30) & (o[:-1] < o[1:])
        inherit = np.zeros(len(order), bool)
        inherit[order[1:]] = prev_ends_here[1:]
        prev = np.empty(len(order), np.int64)
        prev[order[1:]] = order[:-1]
        take = either & inherit
        triplet = triplet | (take & triplet[prev * take])
        duple = duple | (take & duple[prev * take])
    return triplet, duple


def unify_chords(classes: np.ndarray, onsets: np.ndarray, lengths: np.ndarray, tracks: np.ndarray,
                 as_written: np.ndarray) -> tuple[np.ndarray, int]:
    """Notes starting together in a track take the chord's majority duration (more than half of
    its notes have it) when it is within a quarter of their own length. The original meant this
    but never counted the votes, so only chords of two notes were ever unified (reference 2.5).
    A note whose length is `as_written` (exactly a class: notated, or already quantised) keeps it."""
    if len(classes) < 2:
        return classes, 0
    order = np.lexsort((classes, onsets, tracks))
    t, o, c = tracks[order], onsets[order], classes[order]
    new_group = np.ones(len(order), bool)
    new_group[1:] = (t[1:] != t[:-1]) | (o[1:] != o[:-1])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(order))
    mixed = np.flatnonzero((ends - starts > 2) & (c[starts] != c[ends - 1]))
    out = classes.copy()
    changed = 0
    for g in mixed.tolist():
        members = order[starts[g]:ends[g]]
        values, counts = np.unique(classes[members], return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] * 2 <= len(members):
            continue
        majority = int(values[k])
        close = np.abs(CLASS_TICKS[majority] - lengths[members]) <= 0.25 * lengths[members]
        move = members[close & (classes[members] != majority) & ~as_written[members]]
        out[move] = majority
        changed += len(move)
    return out, changed


def tied_parts(onset: int, length: float, metre: Metre, limit: int) -> list[tuple[int, int]]:
    """A note longer than the longest class -> parts: up to the bar line, whole bars, the rest."""
    bar, longest = metre.bar_ticks, longest_duration(metre)
    parts, cur, remaining = [], onset, length
    while remaining > longest and cur < limit:
        step = bar - cur % bar
        if step > longest:        # a bar longer than the longest class (5/4, 7/4): to a beat 4 beats on
            step = 4 * 480 - cur % 480
        parts.append((cur, _one_duration(cur % bar, step, metre)))
        cur, remaining = cur + step, remaining - step
    if remaining >= MIN_TAIL and cur < limit:
        parts.append((cur, _one_duration(cur % bar, int(round(remaining)), metre)))
    return parts


@lru_cache(maxsize=65536)
def _one_duration(pos_in_bar: int, length: int, metre: Metre) -> int:
    """choose_durations for one note (a tied part: few distinct ones, so cached)."""
    return int(choose_durations(np.array([pos_in_bar]), np.array([float(length)]), metre)[0])
