"""Per-bar musical features of event rows, for comparing generated bars with real ones (issue 11).

The features follow Yang & Lerch 2018, "On the evaluation of generative models in music" (Neural
Computing and Applications 32, 4773-4784), computed per *bar* - the model's unit - rather than per
piece. `distributions.py` turns them into the paper's intra-/inter-set distance comparison.

Input: a list of pieces, each a list of bars in order, each bar a pair (rows, metre) where rows is
int [T, 5] in the layout of music/vocab.py (T may be 0) and metre a `Metre`, a string "N/D" or the
bar length in model ticks (an int). The order of the pieces' bars is the order of the output rows.
`bars_of(samples)` turns BarSamples (music/rows.py) or sample dicts ({"inputs", "metre"}) into such
a list for one piece.

Notes are decoded exactly as `music.rows.decode_bar` does (vectorised over all bars here; a test
checks the two agree): START rows take no time, an onset at or past the bar end stops the bar, and a
note is a row with duration class > 0, pitch >= 0 and instrument >= 0. Times are in the model's
beats (480 model ticks per beat; in x/2 the beat is the half note, in compound metres the dotted
beat: timing.py), so a rhythm reads the same in every metre, as the time classes do.

Features (name: shape per bar, what it is):
- pitch_class [12]: histogram of the notes' pitch classes (MIDI pitch = index + PITCH_LOW, C = 0),
  normalised to sum 1; all zeros for an empty bar.
- pitch_range [scalar]: highest minus lowest MIDI pitch in the bar; 0 with fewer than two notes.
- polyphony [scalar]: notes per distinct onset (mean chord size); 0 for an empty bar.
- notes [scalar]: number of notes.
- onsets [scalar]: number of distinct onset times.
- ioi [len(IOI_EDGES) - 1]: histogram of the inter-onset intervals between consecutive distinct
  onsets of the bar, in beats, over the half-octave bins IOI_EDGES (powers of two sit in the
  middle of a bin; the outer bins are open), normalised; zeros with fewer than two onsets.
- duration [len(DURATION_EDGES) - 1]: histogram of the notes' durations in beats (the duration
  class's length, not cut at the bar end) over the same half-octave bins, normalised; zeros for
  an empty bar.
- instrument [23]: histogram of the notes' instrument classes, normalised; zeros for an empty bar.
- empty [scalar]: 1 for a bar without notes, else 0.
- repetition [scalar]: note-set F1 of the bar against the previous bar of the same piece, the notes
  as sets of (onset, pitch, instrument): 2|A & B| / (|A| + |B|), 1 when both are empty (as
  generate/metrics.py's note F1); NaN for a piece's first bar (distributions.py drops NaN).

`HISTOGRAM_WEIGHTS` says what each histogram feature was normalised by, so that a whole set's pooled
histogram (counts over all its notes or intervals) can be rebuilt: `pooled_histograms(features)`.

numpy only: no torch, no Ray (this runs where neither is installed). 10^4 bars take well under a
second (tests/unit/test_music_stats.py times it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mahler_dist.music import vocab as V
from mahler_dist.music.timing import CLASS_TICKS, TICKS_PER_BEAT, Metre, normalise_metre

#: Half-octave bins in beats, shared by inter-onset intervals and durations: edges 2^(k/2 - 3.25),
#: so 1/8, 1/4, 1/2, 1, 2 and 4 beats are bin centres and the triplet values (1/6, 1/3, 2/3, 4/3)
#: fall in their own bins. The first and last bins are open (values beyond are counted there).
HALF_OCTAVE_EDGES = 2.0 ** np.arange(-3.25, 2.76, 0.5)       # 13 edges: 0.105 .. 6.73 beats, 12 bins
IOI_EDGES = HALF_OCTAVE_EDGES
DURATION_EDGES = HALF_OCTAVE_EDGES

#: Feature name -> number of values per bar (1: a scalar, stored as a 1-D array).
FEATURES: dict[str, int] = {
    "pitch_class": 12,
    "pitch_range": 1,
    "polyphony": 1,
    "notes": 1,
    "onsets": 1,
    "ioi": len(IOI_EDGES) - 1,
    "duration": len(DURATION_EDGES) - 1,
    "instrument": V.NUM_INSTRUMENTS,
    "empty": 1,
    "repetition": 1,
}

#: Histogram feature -> (scalar feature, shift): per-bar weight = max(features[scalar] + shift, 0),
#: the number of notes or intervals the bar's histogram was normalised over.
HISTOGRAM_WEIGHTS: dict[str, tuple[str, int]] = {
    "pitch_class": ("notes", 0),
    "ioi": ("onsets", -1),
    "duration": ("notes", 0),
    "instrument": ("notes", 0),
}

_NUM_KEYS = V.NUM_PITCHES * V.NUM_INSTRUMENTS


def bar_ticks_of(metre: Metre | str | int) -> int:
    """Bar length in model ticks of a Metre, an "N/D" string (normalised as the encoder does) or an int."""
    if isinstance(metre, Metre):
        return metre.bar_ticks
    if isinstance(metre, (int, np.integer)):
        return int(metre)
    numerator, denominator = str(metre).strip().split("/")
    return normalise_metre(int(numerator), int(denominator)).bar_ticks


def bars_of(samples: Iterable) -> list[tuple[np.ndarray, str | Metre]]:
    """One piece's bars as (rows, metre) pairs from BarSamples or dicts with "inputs" and "metre"."""
    out = []
    for s in samples:
        if isinstance(s, dict):
            out.append((s["inputs"], s["metre"]))
        else:
            out.append((s.inputs, s.metre))
    return out


def decode_notes(pieces: Sequence[Sequence[tuple[np.ndarray, Metre | str | int]]]) -> dict[str, np.ndarray]:
    """Every note of every bar, as decode_bar gives them, in bar order.

    Returns {"bar": int64 [M] global bar index, "onset": model ticks from the bar start,
    "duration": duration class, "pitch": pitch index, "instrument": class, "bar_ticks": int64 [B],
    "first": bool [B] (a piece's first bar)}."""
    tick_cache: dict = {}
    rows_list, lengths, bar_ticks, first = [], [], [], []
    for piece in pieces:
        for b, (rows, metre) in enumerate(piece):
            rows = np.asarray(rows).reshape(-1, V.ROW_WIDTH)
            rows_list.append(rows)
            lengths.append(len(rows))
            if metre not in tick_cache:
                tick_cache[metre] = bar_ticks_of(metre)
            bar_ticks.append(tick_cache[metre])
            first.append(b == 0)
    n_bars = len(lengths)
    bar_ticks_a = np.asarray(bar_ticks, dtype=np.int64)
    rows = (np.concatenate(rows_list).astype(np.int64) if rows_list else np.zeros((0, V.ROW_WIDTH), np.int64))
    lengths_a = np.asarray(lengths, dtype=np.int64)
    bar = np.repeat(np.arange(n_bars, dtype=np.int64), lengths_a)
    timed = rows[:, V.DURATION] >= 0                           # START rows take no time
    step = np.where(timed, CLASS_TICKS[np.where(timed, rows[:, V.OFFSET], 0)], 0)
    total = np.cumsum(step)
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]) if n_bars else np.zeros(0, np.int64)
    before = np.where(starts > 0, total[np.maximum(starts - 1, 0)], 0) if len(total) else np.zeros(n_bars, np.int64)
    onset = total - before[bar] if len(total) else total
    # decode_bar stops at the first onset at or past the bar end; onsets never decrease within a
    # bar (offsets are >= 0), so keeping the onsets before the end is the same thing
    keep = (timed & (onset < bar_ticks_a[bar]) & (rows[:, V.DURATION] > 0)
            & (rows[:, V.PITCH] >= 0) & (rows[:, V.INSTRUMENT] >= 0))
    return {
        "bar": bar[keep], "onset": onset[keep], "duration": rows[keep, V.DURATION],
        "pitch": rows[keep, V.PITCH], "instrument": rows[keep, V.INSTRUMENT],
        "bar_ticks": bar_ticks_a, "first": np.asarray(first, dtype=bool),
    }


def _histogram(bar: np.ndarray, bins: np.ndarray, n_bars: int, n_bins: int) -> np.ndarray:
    """Counts [n_bars, n_bins] of (bar, bin) pairs, each row normalised to sum 1 (zeros stay zeros)."""
    counts = np.bincount(bar * n_bins + bins, minlength=n_bars * n_bins).reshape(n_bars, n_bins).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _bin(values_beats: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: inner edges only, so the outer bins are open."""
    return np.searchsorted(edges[1:-1], values_beats, side="right")


def bar_features(pieces: Sequence[Sequence[tuple[np.ndarray, Metre | str | int]]]) -> dict[str, np.ndarray]:
    """The FEATURES of every bar of `pieces` (see the module docstring): {name: float64 [B] or [B, d]}."""
    notes = decode_notes(pieces)
    n_bars = len(notes["bar_ticks"])
    bar, onset = notes["bar"], notes["onset"]
    pitch, instrument, duration = notes["pitch"], notes["instrument"], notes["duration"]
    midi = pitch + V.PITCH_LOW
    n_notes = np.bincount(bar, minlength=n_bars)
    out: dict[str, np.ndarray] = {}
    out["pitch_class"] = _histogram(bar, midi % 12, n_bars, 12)

    pitch_range = np.zeros(n_bars)
    has = np.flatnonzero(n_notes)
    if len(has):
        seg = np.searchsorted(bar, has)                 # notes are in bar order
        pitch_range[has] = np.maximum.reduceat(midi, seg) - np.minimum.reduceat(midi, seg)
    out["pitch_range"] = pitch_range

    # distinct onsets: onsets never decrease within a bar, so a new one is where (bar, onset) changes
    new = np.ones(len(bar), dtype=bool)
    new[1:] = (bar[1:] != bar[:-1]) | (onset[1:] != onset[:-1])
    onset_bar, onset_tick = bar[new], onset[new]
    n_onsets = np.bincount(onset_bar, minlength=n_bars)
    out["polyphony"] = np.divide(n_notes, n_onsets, out=np.zeros(n_bars), where=n_onsets > 0)
    out["notes"] = n_notes.astype(np.float64)
    out["onsets"] = n_onsets.astype(np.float64)

    same = onset_bar[1:] == onset_bar[:-1]
    ioi_beats = (onset_tick[1:] - onset_tick[:-1])[same] / TICKS_PER_BEAT
    out["ioi"] = _histogram(onset_bar[1:][same], _bin(ioi_beats, IOI_EDGES), n_bars, len(IOI_EDGES) - 1)
    out["duration"] = _histogram(bar, _bin(CLASS_TICKS[duration] / TICKS_PER_BEAT, DURATION_EDGES),
                                 n_bars, len(DURATION_EDGES) - 1)
    out["instrument"] = _histogram(bar, instrument, n_bars, V.NUM_INSTRUMENTS)
    out["empty"] = (n_notes == 0).astype(np.float64)
    out["repetition"] = _repetition(notes, n_bars)
    return out


def _repetition(notes: dict[str, np.ndarray], n_bars: int) -> np.ndarray:
    """Note-set F1 against the previous bar of the same piece; NaN on a piece's first bar."""
    span = int(notes["bar_ticks"].max()) + 1 if n_bars else 1
    per_bar = span * _NUM_KEYS
    key = (notes["bar"] * per_bar + notes["onset"] * _NUM_KEYS
           + notes["pitch"] * V.NUM_INSTRUMENTS + notes["instrument"])
    unique = np.unique(key)                             # the note sets: duplicates count once
    size = np.bincount(unique // per_bar, minlength=n_bars)
    # a note of bar b-1 shifted to bar b: the intersection counts bar b's notes also in bar b-1
    common = np.intersect1d(unique, unique + per_bar, assume_unique=True)
    shared = np.bincount(common // per_bar, minlength=n_bars + 1)[:n_bars]
    previous = np.concatenate([[0], size[:-1]]) if n_bars else size
    both = size + previous
    f1 = np.divide(2.0 * shared, both, out=np.ones(n_bars), where=both > 0)
    f1[notes["first"]] = np.nan                         # also hides any match across a piece boundary
    return f1


def bar_stats(rows: np.ndarray, metre: Metre | str | int) -> dict[str, float | np.ndarray]:
    """The features of one bar alone (repetition is NaN: it has no previous bar)."""
    feats = bar_features([[(rows, metre)]])
    return {k: (float(v[0]) if v.ndim == 1 else v[0]) for k, v in feats.items()}


def histogram_weights(features: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Per-bar count that histogram feature `name` was normalised over (HISTOGRAM_WEIGHTS)."""
    scalar, shift = HISTOGRAM_WEIGHTS[name]
    return np.maximum(features[scalar] + shift, 0)


def pooled_histograms(features: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Whole-set count histograms (over every note or interval of the bars in `mask`, default all)."""
    out = {}
    for name in HISTOGRAM_WEIGHTS:
        hist, weights = features[name], histogram_weights(features, name)
        if mask is not None:
            hist, weights = hist[mask], weights[mask]
        out[name] = (hist * weights[:, None]).sum(axis=0)
    return out
