"""Score -> Piece: MahlerNet's quantiser and its heuristics (reference sections 2.2-2.6).

A piece goes through these steps; each heuristic is a switch of QuantizeOptions (data.quantize in
a config; QuantizeOptions.first() is the first quantiser, every heuristic off) and every note it
moves or drops is counted by reason in Piece.stats ("moved: ...", "dropped: ..."):

1. `metre_ranges`  the score cut at time-signature changes; unsupported metres end a chunk.
                   Additive metres (5/4, 7/8, 15/8, ...) are bars of that many beats.
2. `repair_notes`  grace notes just before a metre change onto its downbeat.
3. per metre range (`_quantise_range`), in model ticks (480 per beat of the metre):
   - chord clustering per track (note_repairs.cluster_onsets);
   - onsets snap to the grid (onset_grid: coarse first, the fine grid where the source means it);
   - unreachable gaps between neighbouring onsets are repaired by moving one onset of the pair,
     never one on a beat (onset_grid.repair_gaps_minimal);
   - ends off the grid snap to the next onset of their track when the note is played legato or
     overlaps it (note_repairs.legato_and_overlap);
   - durations: the original's scored choice among the classes the metre, the start and the
     note's rhythm context and instrument allow; chords agree on their majority duration; notes
     longer than the longest class become tied parts (durations.py);
   - a range that still loses too many notes rejects the file with the reason (check_quantisable).
4. `_assemble_chunk`  ranges -> bars (each padded to whole bars), chunks trimmed of leading
                   silence (whole bars) and ended at the first bar line after the last note.
5. unison doublings on one instrument class are merged; at most `max_instruments` classes sound
   at once (channel_limit).

What is written exactly (on the grid, a class length) is left as it is: a quantised piece
quantises to itself. Pitches outside MIDI 18..112 are folded by octaves; unmapped instruments
(GM 112-127) and drums are dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mahler_dist.errors import MidiReadError
from mahler_dist.music import piece as P
from mahler_dist.music.instruments import PROGRAM_TO_CLASS, UNMAPPED
from mahler_dist.music.piece import Bar, Piece, PieceCol
from mahler_dist.music import note_repairs as R
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, QuantizeOptions
from mahler_dist.music.score import MetreChange, NoteCol, Score
from mahler_dist.music.channel_limit import DROPPED as CHANNEL_DROPPED
from mahler_dist.music.channel_limit import limit_instruments
from mahler_dist.music.durations import UNIFIED, choose_durations, exclusions, longest_duration, tied_parts, unify_chords
from mahler_dist.music.onset_grid import (
    COARSE,
    GAP_MOVED,
    repair_gaps_forward,
    repair_gaps_minimal,
    snap_coarse_first,
    snap_onsets,
    unreachable_gaps,
)
from mahler_dist.music.timing import CLASS_TICKS, Metre, UnsupportedMetre, normalise_metre
from mahler_dist.music.vocab import NUM_PITCHES, PITCH_LOW


@dataclass(frozen=True)
class MetreRange:
    start: int               # score ticks
    end: int
    metre: Metre | None      # None: unsupported
    label: str               # the time signature as written
    end_is_change: bool = False  # another range follows (its end is a time-signature change)


def metre_ranges(score: Score, additive: bool = True) -> list[MetreRange]:
    """The score cut at every time-signature change (4/4 before the first one); `additive`:
    whether 5/4, 7/8, ... are supported (QuantizeOptions.additive_metres)."""
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
            metre: Metre | None = normalise_metre(change.numerator, change.denominator, additive)
        except UnsupportedMetre:
            metre = None
        ranges.append(MetreRange(change.tick, end, metre, str(change), i + 1 < len(changes)))
    return ranges


def fold_pitches(pitches: np.ndarray) -> np.ndarray:
    """MIDI pitch -> index 0..95 by octave folding into 18..112 (reference 1.4)."""
    p = pitches.copy()
    low = p <= PITCH_LOW
    p[low] += 12 * ((PITCH_LOW - p[low]) // 12 + 1)
    high = p > PITCH_LOW + NUM_PITCHES - 1
    p[high] -= 12 * ((p[high] - (PITCH_LOW + NUM_PITCHES - 1) + 11) // 12)
    return p - PITCH_LOW


def repair_notes(notes: np.ndarray, ranges: list[MetreRange], options: QuantizeOptions,
                 stats: Counter) -> np.ndarray:
    """The score-level repairs of note_repairs, as the options switch them (counted in stats)."""
    if options.grace_to_downbeat:
        # the window stays under the finest grid step (1/8 beat) of the metre it leaves, so no
        # note written on that metre's grid moves
        after = [(i, r) for i, r in enumerate(ranges) if i and r.metre is not None]
        changes = np.array([r.start for _, r in after], dtype=np.int64)
        windows = np.array([min(options.grace_window, _finest_step(ranges[i - 1].metre)) for i, _ in after])
        notes, n = R.grace_to_downbeat(notes, changes, windows)
        stats[f"moved: {R.GRACE}"] += n
    return notes


def _finest_step(metre: Metre | None) -> float:
    """The 1/8-beat grid step of `metre` in score ticks (a quarter's eighth where unsupported)."""
    return 60 * float(metre.tick_scale) if metre is not None else 60.0


_CLASS_LENGTHS = np.unique(CLASS_TICKS[1:])


def _is_class_length(lengths: np.ndarray) -> np.ndarray:
    idx = np.clip(np.searchsorted(_CLASS_LENGTHS, lengths), 1, len(_CLASS_LENGTHS) - 1)
    near = np.minimum(np.abs(_CLASS_LENGTHS[idx] - lengths), np.abs(_CLASS_LENGTHS[idx - 1] - lengths))
    return near < 0.5


def _bpm_at(score: Score, ticks: np.ndarray) -> np.ndarray:
    """Quarter notes per minute in force at each tick (120 before the first tempo event)."""
    if not score.tempos:
        return np.full(len(ticks), 120.0)
    at = np.array([t.tick for t in score.tempos], dtype=np.int64)
    us = np.array([t.us_per_quarter for t in score.tempos], dtype=np.float64)
    idx = np.searchsorted(at, ticks, side="right") - 1
    return np.where(idx >= 0, 60_000_000 / us[np.maximum(idx, 0)], 120.0)


def _quantise_range(notes: np.ndarray, bpm: np.ndarray, rng: MetreRange, options: QuantizeOptions,
                    stats: Counter) -> tuple[np.ndarray, int, np.ndarray]:
    """Notes of one supported range -> (int64 [M, 5] local-bar piece notes, number of bars,
    float [K, 2] |onset shift| and |duration change| in beats per source note)."""
    metre = rng.metre
    scale = float(metre.tick_scale)
    bar = metre.bar_ticks
    span = (rng.end - rng.start) / scale
    # a range a grace window longer than whole bars (a time signature placed a little late) is
    # not padded with a bar of its own: its notes there have moved to the next range's downbeat
    slack = min(options.grace_window / scale, 60) if options.grace_to_downbeat and rng.end_is_change else 1e-9
    n_bars = max(1, int(np.ceil((span - slack) / bar)))
    if len(notes) == 0:
        return np.zeros((0, 5), np.int64), n_bars, np.zeros((0, 2))
    exact = source = (notes[:, NoteCol.START] - rng.start) / scale
    if options.cluster_onsets:   # a window under the 1/8 beat: notes written on the grid never cluster
        exact, clustered = R.cluster_onsets(exact, notes[:, NoteCol.TRACK], min(options.cluster_window / scale, 60))
        stats[f"moved: {R.CLUSTERED}"] += clustered
    if options.coarse_grid:
        onsets, coarse = snap_coarse_first(exact, metre, notes[:, NoteCol.TRACK], options.fine_tolerance_beats * 480,
                                           options.fast_gap_beats * 480)
        stats[f"moved: {COARSE}"] += coarse
    else:
        onsets = snap_onsets(exact, metre)
    order = np.argsort(onsets, kind="stable")
    notes, exact, onsets, bpm, source = notes[order], exact[order], onsets[order], bpm[order], source[order]
    if options.gap_repair == "minimal":
        repaired = repair_gaps_minimal(onsets, exact, metre)
    else:
        repaired = repair_gaps_forward(onsets, metre)
    stats[f"moved: {GAP_MOVED}"] += int((repaired != onsets).sum())
    onsets = repaired
    source_lengths = (notes[:, NoteCol.END] - notes[:, NoteCol.START]) / scale
    # the snapped onset moves the note; keep its end where it was, as far as the grid allows (a
    # clustered note keeps its length: it was played late, not long)
    ends = exact + source_lengths
    tracks, instruments = notes[:, NoteCol.TRACK], notes[:, NoteCol.PROGRAM]
    if options.legato_repair or options.overlap_repair:
        # an end on the grid, or a length that is a class, is as written: a quantised piece
        # quantises to itself
        off_grid = (np.abs(snap_onsets(ends, metre) - ends) > 0.5) & ~_is_class_length(ends - onsets)
        ends, held, cut = R.legato_and_overlap(
            onsets, ends, tracks, off_grid, options.legato_fraction if options.legato_repair else None,
            options.legato_max_gap / scale, options.overlap_fraction if options.overlap_repair else None,
            480 / scale)
        stats[f"moved: {R.LEGATO}"] += held
        stats[f"moved: {R.OVERLAP}"] += cut
    lengths = np.maximum(ends - onsets, 1.0)
    quantised_lengths = np.zeros(len(notes))
    longest = longest_duration(metre)
    n_bars = max(n_bars, int(onsets.max() // bar) + 1)
    rows = []
    simple = lengths <= longest
    if simple.any():
        pos = onsets[simple]
        excluded = exclusions(pos % bar, lengths[simple], tracks[simple], instruments[simple], bpm[simple],
                              metre, options)
        cls = choose_durations(pos % bar, lengths[simple], metre, excluded)
        if options.unify_chords:
            cls, unified = unify_chords(cls, pos, lengths[simple], tracks[simple],
                                        _is_class_length(lengths[simple]))
            stats[f"moved: {UNIFIED}"] += unified
        quantised_lengths[simple] = CLASS_TICKS[cls]
        pitch, program = notes[simple, NoteCol.PITCH], instruments[simple]
        rows.append(np.stack([pos // bar, pos % bar, cls, pitch, program], 1))
    pitch_col = int(NoteCol.PITCH)   # an int: looked up per tied note
    for k in np.flatnonzero(~simple):
        parts = tied_parts(int(onsets[k]), float(lengths[k]), metre, n_bars * bar)
        quantised_lengths[k] = sum(int(CLASS_TICKS[c]) for _, c in parts)
        pitch, program = notes[k, pitch_col], instruments[k]
        for pos, cls in parts:
            rows.append(np.array([[pos // bar, pos % bar, cls, pitch, program]]))
    check_quantisable(onsets, rng, options)
    errors = np.stack([np.abs(onsets - source), np.abs(quantised_lengths - source_lengths)], 1) / 480
    return np.concatenate(rows).astype(np.int64), n_bars, errors


class Unquantisable(Exception):
    """A metre range loses too many notes to the grid (quantize turns it into a MidiReadError)."""


def check_quantisable(onsets: np.ndarray, rng: MetreRange, options: QuantizeOptions) -> None:
    """Reject the file when too many of a range's notes sit where no time class reaches (the
    rows would drop them): the original's 5% rule, with a reason."""
    u, counts = np.unique(onsets, return_counts=True)
    lost = int(counts[unreachable_gaps(u, rng.metre)].sum())
    if lost and lost > options.max_unquantisable_fraction * len(onsets):
        raise Unquantisable(
            f"{lost} of {len(onsets)} notes of the {rng.label} range at tick {rng.start} cannot be placed on the "
            f"grid ({100 * lost / len(onsets):.1f}% > data.quantize.max_unquantisable_fraction "
            f"{100 * options.max_unquantisable_fraction:g}%)")


def quantize(score: Score, name: str, options: QuantizeOptions = DEFAULT_OPTIONS) -> Piece:
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

    ranges = metre_ranges(score, options.additive_metres)
    notes = repair_notes(notes, ranges, options, stats)
    bpm = _bpm_at(score, notes[:, NoteCol.START])
    for rng in ranges:
        inside = (notes[:, NoteCol.START] >= rng.start) & (notes[:, NoteCol.START] < rng.end)
        if rng.metre is None:
            unsupported[rng.label] += int(inside.sum())
            close_chunk()
            continue
        try:
            local, n_bars, range_errors = _quantise_range(notes[inside], bpm[inside], rng, options, stats)
        except Unquantisable as e:
            raise MidiReadError(name, str(e)) from None
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
    if options.max_instruments and len(all_notes):
        starts, ends = Piece(name, bars, all_notes).absolute_times()
        keep = limit_instruments(starts, ends, all_notes[:, PieceCol.INSTR], options.max_instruments)
        stats[f"dropped: {CHANNEL_DROPPED}"] += int((~keep).sum())
        all_notes = all_notes[keep]
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
