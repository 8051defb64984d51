"""Score -> Piece: snap notes onto MahlerNet's grid, metre range by metre range.

This is the first quantiser (a later issue adds the full MahlerNet heuristics of reference
sections 2.2-2.6). Its steps are separate functions so that those heuristics can replace them:

1. `metre_ranges`   cut the score at time-signature changes; unsupported metres end a chunk;
2. `snap_onsets`    onsets to the nearest grid point (1/8 and 1/6 beat; 1/6 in compound metres);
3. `make_gaps_representable`  move the rare onset whose distance to the previous one no sum of
                    time classes expresses (20, 40 or 100 model ticks) onto the nearest one that is;
4. `choose_durations`  nearest allowed duration class, with the original's rarity prior and
                    start-position rules; notes longer than the longest class become tied parts
                    (re-articulated, as in the original: lossy);
5. `assemble`       ranges -> bars (each range padded to whole bars), chunks trimmed of leading
                    silence (whole bars) and ended at the first bar line after the last note.

Lossy, and counted in Piece.stats: unmapped instruments (GM 112-127), drums, notes in
unsupported metres ("dropped: ..."); unison doublings on one instrument class ("merged: ...");
pitches outside MIDI 18..112 are folded by octaves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mahler_dist.errors import MidiReadError
from mahler_dist.music import piece as P
from mahler_dist.music.instruments import PROGRAM_TO_CLASS, UNMAPPED
from mahler_dist.music.piece import Bar, Piece, PieceCol
from mahler_dist.music.score import MetreChange, NoteCol, Score
from mahler_dist.music.timing import (
    CLASS_TICKS,
    TIME_CLASSES,
    Metre,
    UnsupportedMetre,
    decompose_gap,
    duration_mask,
    normalise_metre,
)
from mahler_dist.music.vocab import NUM_PITCHES, PITCH_LOW

#: Notes shorter than this many model ticks after tied-part splitting are dropped as a tail.
_MIN_TAIL = 30


@dataclass(frozen=True)
class MetreRange:
    start: int               # score ticks
    end: int
    metre: Metre | None      # None: unsupported
    label: str               # the time signature as written


def metre_ranges(score: Score) -> list[MetreRange]:
    """The score cut at every time-signature change (4/4 before the first one)."""
    changes = list(score.metres)
    if not changes or changes[0].tick > 0:
        changes.insert(0, MetreChange(0, 4, 4))
    last = max(score.end_tick, int(score.notes[:, NoteCol.END].max()) if len(score.notes) else 0)
    ranges = []
    for i, change in enumerate(changes):
        end = changes[i + 1].tick if i + 1 < len(changes) else last
        if end <= change.tick:
            continue
        try:
            metre: Metre | None = normalise_metre(change.numerator, change.denominator)
        except UnsupportedMetre:
            metre = None
        ranges.append(MetreRange(change.tick, end, metre, str(change)))
    return ranges


def fold_pitches(pitches: np.ndarray) -> np.ndarray:
    """MIDI pitch -> index 0..95 by octave folding into 18..112 (reference 1.4)."""
    p = pitches.copy()
    low = p <= PITCH_LOW
    p[low] += 12 * ((PITCH_LOW - p[low]) // 12 + 1)
    high = p > PITCH_LOW + NUM_PITCHES - 1
    p[high] -= 12 * ((p[high] - (PITCH_LOW + NUM_PITCHES - 1) + 11) // 12)
    return p - PITCH_LOW


def snap_onsets(onsets: np.ndarray, metre: Metre) -> np.ndarray:
    """Model-tick onsets (float) -> nearest grid point (int). The grid is 1/8 beat (60) and
    1/6 beat (80) in simple metres and 1/6 beat in compound ones; ties go to the duple grid."""
    if metre.compound:
        return (np.floor(onsets / 80 + 0.5) * 80).astype(np.int64)
    duple = np.floor(onsets / 60 + 0.5) * 60
    triple = np.floor(onsets / 80 + 0.5) * 80
    use_triple = np.abs(triple - onsets) < np.abs(duple - onsets)
    return np.where(use_triple, triple, duple).astype(np.int64)


def make_gaps_representable(positions: np.ndarray, metre: Metre) -> np.ndarray:
    """Positions (model ticks from the range start, sorted) such that every gap between distinct
    consecutive onsets - and from each bar line to its bar's first onset - is a sum of allowed
    classes. Offending onsets move to the nearest representable position (merging into the
    previous onset when that is nearest)."""
    out = positions.copy()
    bar = metre.bar_ticks
    prev = None
    for i in range(len(out)):
        pos = int(out[i])
        if prev is not None and pos < prev:   # an earlier move passed this onset: join it
            out[i] = pos = prev
        ref = prev if prev is not None and prev // bar == pos // bar else pos - pos % bar
        gap = pos - ref
        if gap and decompose_gap(gap, metre) is None:
            pos = ref + _nearest_representable_gap(gap, metre)
            out[i] = pos
        prev = pos
    return out


@lru_cache(maxsize=None)
def _nearest_representable_gap(gap: int, metre: Metre) -> int:
    for delta in range(20, 10 * 480, 20):
        for candidate in (gap - delta, gap + delta):
            if candidate >= 0 and (candidate == 0 or decompose_gap(candidate, metre) is not None):
                return candidate
    return 0


@lru_cache(maxsize=None)
def _duration_tables(metre: Metre) -> tuple[np.ndarray, np.ndarray]:
    """(allowed [bar_ticks/20, 60] bool by position in the bar, prior [60]) for `metre`."""
    from fractions import Fraction

    usable = duration_mask(metre)
    n = metre.bar_ticks // 20
    allowed = np.zeros((n, len(TIME_CLASSES)), dtype=bool)
    for k in range(n):
        beats = Fraction(k * 20, 480)
        allowed[k] = usable & np.array([c.start_ok(beats) for c in TIME_CLASSES])
    freq = np.array([c.freq for c in TIME_CLASSES], dtype=np.float64)
    return allowed, freq


def choose_durations(pos_in_bar: np.ndarray, durations: np.ndarray, metre: Metre) -> np.ndarray:
    """Duration class for each note (model-tick lengths, float). An exact class wins; otherwise
    the original's score |error|*(freq+1) + 15*freq (reference 2.4) picks among the classes the
    metre and the start position allow."""
    allowed, freq = _duration_tables(metre)
    ok = allowed[(pos_in_bar // 20).astype(np.int64)]                          # [N, 60]
    err = np.abs(CLASS_TICKS[None, :] - durations[:, None])                    # [N, 60]
    score = err * (freq + 1) + 15 * freq
    score = np.where(err < 0.5, -1.0, score)
    score = np.where(ok, score, np.inf)
    return np.argmin(score, axis=1)


def _longest_duration(metre: Metre) -> int:
    return int(CLASS_TICKS[np.flatnonzero(duration_mask(metre))[-1]])


def _quantise_range(notes: np.ndarray, rng: MetreRange) -> tuple[np.ndarray, int, np.ndarray]:
    """Notes of one supported range -> (int64 [M, 5] local-bar piece notes, number of bars,
    float [K, 2] |onset shift| and |duration change| in beats per source note)."""
    metre = rng.metre
    scale = float(metre.tick_scale)
    span = (rng.end - rng.start) / scale
    n_bars = max(1, int(np.ceil(span / metre.bar_ticks - 1e-9)))
    if len(notes) == 0:
        return np.zeros((0, 5), np.int64), n_bars, np.zeros((0, 2))
    exact = (notes[:, NoteCol.START] - rng.start) / scale
    onsets = snap_onsets(exact, metre)
    order = np.argsort(onsets, kind="stable")
    notes, exact, onsets = notes[order], exact[order], make_gaps_representable(onsets[order], metre)
    source_lengths = (notes[:, NoteCol.END] - notes[:, NoteCol.START]) / scale
    # the snapped onset moves the note; keep its end where it was, as far as the grid allows
    lengths = np.maximum(source_lengths + (exact - onsets), 1.0)
    quantised_lengths = np.zeros(len(notes))
    longest = _longest_duration(metre)
    bar = metre.bar_ticks
    n_bars = max(n_bars, int(onsets.max() // bar) + 1)
    rows = []
    simple = lengths <= longest
    if simple.any():
        pos = onsets[simple]
        cls = choose_durations(pos % bar, lengths[simple], metre)
        quantised_lengths[simple] = CLASS_TICKS[cls]
        pitch, program = notes[simple, NoteCol.PITCH], notes[simple, NoteCol.PROGRAM]
        rows.append(np.stack([pos // bar, pos % bar, cls, pitch, program], 1))
    pitch_col, program_col = int(NoteCol.PITCH), int(NoteCol.PROGRAM)   # ints: looked up per tied note
    for k in np.flatnonzero(~simple):
        parts = _tied_parts(int(onsets[k]), float(lengths[k]), metre, n_bars * bar)
        quantised_lengths[k] = sum(int(CLASS_TICKS[c]) for _, c in parts)
        pitch, program = notes[k, pitch_col], notes[k, program_col]
        for pos, cls in parts:
            rows.append(np.array([[pos // bar, pos % bar, cls, pitch, program]]))
    errors = np.stack([np.abs(onsets - exact), np.abs(quantised_lengths - source_lengths)], 1) / 480
    return np.concatenate(rows).astype(np.int64), n_bars, errors


def _tied_parts(onset: int, length: float, metre: Metre, limit: int) -> list[tuple[int, int]]:
    """A note longer than the longest class -> parts: up to the bar line, whole bars, the rest."""
    bar, longest = metre.bar_ticks, _longest_duration(metre)
    parts, cur, remaining = [], onset, length
    while remaining > longest and cur < limit:
        step = bar - cur % bar
        cls = int(choose_durations(np.array([cur % bar]), np.array([float(step)]), metre)[0])
        parts.append((cur, cls))
        cur, remaining = cur + step, remaining - step
    if remaining >= _MIN_TAIL and cur < limit:
        parts.append((cur, int(choose_durations(np.array([cur % bar]), np.array([remaining]), metre)[0])))
    return parts


def quantize(score: Score, name: str) -> Piece:
    """Quantise a Score into a Piece; raise MidiReadError(name, reason) when nothing is left."""
    stats = Counter({"source notes": score.source_notes})
    stats.update({f"dropped: {k}": v for k, v in score.dropped.items()})
    notes = score.notes.copy()
    classes = np.asarray(PROGRAM_TO_CLASS, dtype=np.int64)[notes[:, NoteCol.PROGRAM]]
    unmapped = classes == UNMAPPED
    stats["dropped: unmapped instrument"] += int(unmapped.sum())
    notes, classes = notes[~unmapped], classes[~unmapped]
    notes[:, NoteCol.PITCH] = fold_pitches(notes[:, NoteCol.PITCH])
    notes[:, NoteCol.PROGRAM] = classes     # from here on the column holds the instrument class

    bars: list[Bar] = []
    piece_notes: list[np.ndarray] = []
    chunk: list[tuple[np.ndarray, int, Metre]] = []
    unsupported = Counter()
    errors: list[np.ndarray] = []

    def close_chunk() -> None:
        _assemble_chunk(chunk, bars, piece_notes)
        chunk.clear()

    for rng in metre_ranges(score):
        inside = (notes[:, NoteCol.START] >= rng.start) & (notes[:, NoteCol.START] < rng.end)
        if rng.metre is None:
            unsupported[rng.label] += int(inside.sum())
            close_chunk()
            continue
        local, n_bars, range_errors = _quantise_range(notes[inside], rng)
        errors.append(range_errors)
        chunk.append((local, n_bars, rng.metre))
    close_chunk()
    for label, count in unsupported.items():
        stats[f"dropped: unsupported metre {label}"] += count

    all_notes = np.concatenate(piece_notes) if piece_notes else np.zeros((0, 5), np.int64)
    all_notes = P.sort_piece_notes(all_notes)
    if len(all_notes):
        key = all_notes[:, [PieceCol.BAR, PieceCol.POS, PieceCol.PITCH, PieceCol.INSTR]]
        first = np.ones(len(all_notes), dtype=bool)
        first[1:] = np.any(key[1:] != key[:-1], axis=1)
        # unison doublings (two parts on one instrument class and pitch at one onset) are one row:
        # the sound is kept, so they are counted as merged, not dropped
        stats["merged: unison doubling"] += int((~first).sum())
        all_notes = all_notes[first]   # sorted so that the first of equals is arbitrary but fixed
    parts = len(all_notes)
    stats["note parts"] = parts
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped: "))
    stats["kept notes"] = max(score.source_notes - dropped - stats["merged: unison doubling"], 0)
    if not parts:
        reasons = ", ".join(f"{k[9:]} {v}" for k, v in stats.items() if k.startswith("dropped: ") and v)
        raise MidiReadError(name, f"no notes left after quantisation ({reasons or 'nothing to keep'})")
    return Piece(name, bars, all_notes, stats, np.concatenate(errors) if errors else np.zeros((0, 2)))


def _assemble_chunk(chunk: list[tuple[np.ndarray, int, Metre]], bars: list[Bar], out: list[np.ndarray]) -> None:
    """Concatenate a chunk's ranges into bars, trim leading empty bars and bars after the last
    sounding note, and append to the piece (bars and notes with global bar indices)."""
    if not chunk:
        return
    metres, notes, offset = [], [], 0
    for local, n_bars, metre in chunk:
        metres += [metre] * n_bars
        if len(local):
            shifted = local.copy()
            shifted[:, PieceCol.BAR] += offset
            notes.append(shifted)
        offset += n_bars
    if not notes:
        return
    notes = np.concatenate(notes)
    first = int(notes[:, PieceCol.BAR].min())
    # the chunk ends at the first bar line at or after the end of its last sounding note
    bar_ticks = np.array([0] + [m.bar_score_ticks for m in metres]).cumsum()   # chunk-local starts
    num = np.array([m.tick_scale.numerator for m in metres])
    den = np.array([m.tick_scale.denominator for m in metres])
    b = notes[:, PieceCol.BAR]
    ends = bar_ticks[b] + (notes[:, PieceCol.POS] + CLASS_TICKS[notes[:, PieceCol.DUR]]) * num[b] // den[b]
    last = int(np.searchsorted(bar_ticks, ends.max() - 1, side="right") - 1)
    last = min(max(last, int(b.max())), len(metres) - 1)
    base = len(bars)
    tick = bars[-1].start + bars[-1].metre.bar_score_ticks if bars else 0
    for i, metre in enumerate(metres[first:last + 1]):
        bars.append(Bar(tick, metre, chunk_start=(i == 0)))
        tick += metre.bar_score_ticks
    notes[:, PieceCol.BAR] += base - first
    out.append(notes)
