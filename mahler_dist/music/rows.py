"""Piece <-> compact event rows, and the bar windows the model trains on (reference 1.1, 2.7, 2.8).

Rows are *bar-anchored*: the first row of every bar measures its offset from the bar start - the
reference's first-row rewrite (2.8), applied once for the whole piece - so a bar window is a plain
slice of the piece's rows and the windows concatenated give back the piece. Within a bar, a gap
that no single class expresses is covered by pause rows (duration class 0) followed by the
note's offset; an empty bar is one pause row of a bar's length with beat slot 0 (reference 2.8).
A pause row's beat and active sets are taken at its end, where it moves the time to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

import numpy as np

from mahler_dist.music import piece as P
from mahler_dist.music.instruments import write_back_programs
from mahler_dist.music.midi_io import assign_channels
from mahler_dist.music.piece import Piece, PieceCol
from mahler_dist.music.score import MetreChange, Score, sort_notes
from mahler_dist.music.timing import CLASS_TICKS, Metre, allowed_classes, beat_position, decompose_gap
from mahler_dist.music.vocab import (
    ACTIVE_BYTES,
    BEAT,
    DURATION,
    INSTRUMENT,
    NONE,
    NUM_PITCHES,
    OFFSET,
    PITCH,
    PITCH_LOW,
    ROW_DTYPE,
    ROW_WIDTH,
    START_ROW,
)


@dataclass
class PieceRows:
    """A piece as rows. `bar_starts[b]:bar_starts[b+1]` are bar b's rows (every bar has >= 1)."""

    rows: np.ndarray          # int8 [R, 5]
    active: np.ndarray        # uint8 [R, ACTIVE_BYTES]
    bar_starts: np.ndarray    # int64 [n_bars + 1]
    metres: list[str]         # per bar, e.g. "4/4"
    chunk_start: np.ndarray   # bool [n_bars]
    dropped: Counter          # notes that could not become rows, by reason

    @property
    def num_bars(self) -> int:
        return len(self.metres)

    def bar(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.bar_starts[b], self.bar_starts[b + 1]
        return self.rows[s:e], self.active[s:e]


def piece_to_rows(piece: Piece) -> PieceRows:
    """Rows for every bar of `piece`, with the sets of sounding pitches/instruments per row."""
    starts, ends = piece.absolute_times()
    notes = piece.notes
    # plain lists: this loop touches every note, and numpy scalar indexing costs ~10x more
    positions, durations = notes[:, PieceCol.POS].tolist(), notes[:, PieceCol.DUR].tolist()
    pitches, instruments = notes[:, PieceCol.PITCH].tolist(), notes[:, PieceCol.INSTR].tolist()
    start_list = starts.tolist()
    rows: list[tuple[int, int, int, int, int]] = []
    snap_at: list[tuple[int, int]] = []     # per row: (time, index of first note not yet added)
    bar_starts = [0]
    dropped = Counter()
    by_bar = np.searchsorted(notes[:, PieceCol.BAR], np.arange(piece.num_bars + 1)).tolist()
    for b, bar in enumerate(piece.bars):
        metre, ref = bar.metre, 0
        gaps = _gap_table(metre)
        lo, hi = by_bar[b], by_bar[b + 1]
        if lo == hi:   # empty bar: pause rows of a bar's length, beat slot 0 (reference 2.8); a bar
            # longer than the longest class (5/4, 7/8) takes several
            filled = 0
            for cls in gaps(metre.bar_ticks):
                filled += int(CLASS_TICKS[cls])
                rows.append((cls, beat_position(filled % metre.bar_ticks), 0, NONE, NONE))
                snap_at.append((bar.start + metre.to_score_ticks(filled), lo))
        i = lo
        while i < hi:
            pos = positions[i]
            j = i + 1
            while j < hi and positions[j] == pos:
                j += 1
            parts = gaps(pos - ref)
            if parts is None:   # the quantiser prevents this; kept as a guard that counts
                dropped["gap not representable"] += j - i
                i = j
                continue
            for cls in parts[:-1]:             # pause rows up to the note's offset
                ref += int(CLASS_TICKS[cls])
                rows.append((cls, beat_position(ref), 0, NONE, NONE))
                snap_at.append((bar.start + metre.to_score_ticks(ref), i))
            offset = parts[-1] if parts else 0
            beat = beat_position(pos)
            for k in range(i, j):
                rows.append((offset if k == i else 0, beat, durations[k], pitches[k], instruments[k]))
                snap_at.append((start_list[k], k))
            ref = pos
            i = j
        bar_starts.append(len(rows))
    active = _active_sets(snap_at, notes, starts, ends)
    return PieceRows(
        rows=_array_of_tuples(rows, ROW_DTYPE, ROW_WIDTH),
        active=active,
        bar_starts=np.asarray(bar_starts, dtype=np.int64),
        metres=[str(b.metre) for b in piece.bars],
        chunk_start=np.array([b.chunk_start for b in piece.bars], dtype=bool),
        dropped=dropped,
    )


def _array_of_tuples(items: list[tuple[int, ...]], dtype, width: int) -> np.ndarray:
    """np.asarray(items, dtype).reshape(-1, width) at a third of its cost (it inspects every tuple)."""
    return np.fromiter(chain.from_iterable(items), dtype=dtype, count=width * len(items)).reshape(-1, width)


@lru_cache(maxsize=None)
def _gap_table(metre) -> Callable[[int], tuple[int, ...] | None]:
    """decompose_gap for one metre, memoised per gap without hashing the metre every call."""
    cache: dict[int, tuple[int, ...] | None] = {}

    def gaps(gap: int) -> tuple[int, ...] | None:
        if gap not in cache:
            cache[gap] = decompose_gap(gap, metre)
        return cache[gap]

    return gaps


def _active_sets(snap_at: list[tuple[int, int]], notes: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray) -> np.ndarray:
    """For each row (time t, note index k): pitches/instruments of the notes that started before
    note k (in row order) and end after t - i.e. sounding at t before the row's own note
    (reference 1.1: earlier notes of the same chord count; notes ending at or before t do not).

    Vectorised as a difference array over rows: note j counts from the first row after its own
    (k > j) up to the first row at or after its end; both are searches because row times and
    note indices never decrease along the rows."""
    n_rows = len(snap_at)
    if not n_rows:
        return np.zeros((0, ACTIVE_BYTES), dtype=np.uint8)
    times, first_unadded = _array_of_tuples(snap_at, np.int64, 2).T
    j = np.arange(len(notes))
    added = np.searchsorted(first_unadded, j, side="right")     # first row with k > j
    removed = np.searchsorted(times, ends, side="left")         # first row with t >= end
    live = added < removed
    # One bit column per pitch, then per instrument (pack_active's layout), laid out column-major
    # so that the running sum goes along contiguous memory: 4x faster than summing down the rows
    # of a row-major array, and in int16 (numpy's cumsum would otherwise widen to int64) unless
    # so many notes sound at once that a count could pass 32,767.
    bits = np.concatenate([notes[live, PieceCol.PITCH], NUM_PITCHES + notes[live, PieceCol.INSTR]])
    width = n_rows + 1
    count_dtype = np.int16 if np.count_nonzero(live) <= np.iinfo(np.int16).max else np.int32
    delta = np.zeros((ACTIVE_BYTES * 8, width), dtype=count_dtype)
    flat = delta.reshape(-1)
    np.add.at(flat, bits * width + np.tile(added[live], 2), 1)
    np.add.at(flat, bits * width + np.tile(removed[live], 2), -1)
    np.cumsum(delta, axis=1, dtype=count_dtype, out=delta)
    sounding = (delta[:, :n_rows] > 0).view(np.uint8).reshape(ACTIVE_BYTES, 8, n_rows)
    packed = sounding[:, 0].copy()                    # little bit order, as np.packbits(bitorder="little")
    for b in range(1, 8):
        packed |= sounding[:, b] << b
    return np.ascontiguousarray(packed.T)


def end_offset_class(bar_rows: np.ndarray, metre) -> int:
    """The END-of-bar target: the shortest offset class allowed in `metre` that takes the time
    from the bar's last row to the bar end or past it (class 0 once the rows reach the end, as
    an empty bar's pause row does). Rows carry no end token; training this one extra step
    teaches the decoder where a bar stops, and the generator reads any offset reaching the bar
    end as END (generate/sampler.py)."""
    rows = np.asarray(bar_rows, dtype=np.int64)
    real = rows[:, DURATION] >= 0                     # START rows take no time
    remaining = metre.bar_ticks - int(CLASS_TICKS[rows[real, OFFSET]].sum())
    allowed = allowed_classes(metre)
    return next((c for c in allowed if CLASS_TICKS[c] >= remaining), allowed[-1])


def rows_to_piece(rows: PieceRows | Sequence[np.ndarray], layout: Piece | Sequence[P.Bar] | Sequence[Metre],
                  name: str | None = None) -> Piece:
    """Decode rows back into notes: the one decoder from rows to a Piece (encode's round trip,
    generated bars, piano rolls).

    `rows`: a PieceRows, or one row array per bar. `layout`: the bars to decode onto, as a Piece
    (a template: its bars, metres and chunks, and its name), its list of Bars, or one Metre per
    bar (bars laid end to end, one chunk: generated music). Onsets past a bar's end are dropped
    (a generated bar cannot overflow)."""
    bar_rows = [rows.bar(b)[0] for b in range(rows.num_bars)] if isinstance(rows, PieceRows) else list(rows)
    if isinstance(layout, Piece):
        name, bars = name or layout.name, list(layout.bars)
    elif all(isinstance(m, Metre) for m in layout):
        bars, tick = [], 0
        for metre in layout:
            bars.append(P.Bar(tick, metre, chunk_start=not bars))
            tick += metre.bar_score_ticks
    else:
        bars = list(layout)
    if len(bar_rows) != len(bars):
        raise ValueError(f"{len(bar_rows)} bars of rows but {len(bars)} bars to decode them onto")
    out = []
    for b, (one_bar, bar) in enumerate(zip(bar_rows, bars)):
        out.extend((b, pos, dur, pitch, instr) for pos, dur, pitch, instr in decode_bar(one_bar, bar.metre.bar_ticks))
    notes = np.asarray(out, dtype=np.int64).reshape(-1, 5)
    return Piece(name or "generated", bars, P.sort_piece_notes(notes))


def decode_bar(bar_rows: np.ndarray, bar_ticks: int) -> list[tuple[int, int, int, int]]:
    """One bar's rows -> [(position in model ticks, duration class, pitch, instrument)]."""
    notes, t = [], 0
    for offset, _, duration, pitch, instr in np.asarray(bar_rows, dtype=np.int64):
        if duration < 0:          # START token: no time
            continue
        t += int(CLASS_TICKS[offset])
        if t >= bar_ticks:
            break
        if duration > 0 and pitch >= 0 and instr >= 0:
            notes.append((t, int(duration), int(pitch), int(instr)))
    return notes


def piece_to_score(piece: Piece, programs: tuple[int, ...] | None = None) -> Score:
    """A Piece as a Score for MIDI output: pitches from indices, the write-back program of each
    instrument class (`programs`, default instruments.write_back_programs()), channels allocated
    over time by midi_io.assign_channels (at most 15 classes sounding at once, never the drum
    channel 9; notes beyond that are counted in dropped["no free channel"]), 120 bpm, velocity 64
    and the piece's metres (the original writes no tempo either: reference 9, item 10)."""
    programs = programs or write_back_programs()
    starts, ends = piece.absolute_times()
    instr = piece.notes[:, PieceCol.INSTR]
    notes = np.stack([starts, ends, piece.notes[:, PieceCol.PITCH] + PITCH_LOW,
                      np.asarray(programs)[instr] if len(instr) else instr,
                      np.zeros_like(starts), np.zeros_like(starts)], 1) if len(instr) else np.zeros((0, 6), np.int64)
    placed = assign_channels(notes)
    dropped = Counter({"no free channel": placed.unplaced} if placed.unplaced else {})
    metres, last = [], None
    for bar in piece.bars:
        if (bar.metre.numerator, bar.metre.denominator) != last:
            last = (bar.metre.numerator, bar.metre.denominator)
            metres.append(MetreChange(bar.start, *last))
    end = piece.bars[-1].start + piece.bars[-1].metre.bar_score_ticks if piece.bars else 0
    return Score(notes=sort_notes(placed.notes), metres=metres, end_tick=end, source_notes=len(notes),
                 dropped=dropped)


@dataclass
class BarSample:
    """One training sample: a bar (inputs) with the previous bar (context; START for a chunk's first)."""

    bar: int
    metre: str
    context: np.ndarray   # int8 [Tc, 5]
    inputs: np.ndarray    # int8 [Ti, 5]
    active: np.ndarray    # uint8 [Ti, ACTIVE_BYTES]

    def as_dict(self) -> dict:
        return {"context": self.context, "inputs": self.inputs, "active": self.active, "metre": self.metre}


def bar_windows(rows: PieceRows) -> list[BarSample]:
    """One sample per bar (reference 2.8 with ctx_length = inp_length = 1)."""
    samples = []
    for b in range(rows.num_bars):
        inputs, active = rows.bar(b)
        context = START_ROW[None, :] if rows.chunk_start[b] else rows.bar(b - 1)[0]
        samples.append(BarSample(b, rows.metres[b], context, inputs, active))
    return samples
