"""Random bars that keep the row invariants, for model tests and benchmarks without MIDI.

The invariants the model relies on (music/vocab.py): pause rows have duration 0, offset > 0 and
no pitch/instrument; notes at one onset follow the first with offset 0 in ascending pitch; the
context of a piece's first bar is the START row. Musical time is not simulated exactly (class
indices stand in for lengths), so these bars are for shapes and speed, not for listening.
"""

from __future__ import annotations

import numpy as np

from mahler_dist.music import vocab as V


def random_bar(rng: np.random.Generator, rows: int, pause_prob: float = 0.1,
               max_chord: int = 4) -> dict[str, np.ndarray]:
    """One bar of exactly `rows` rows: {"inputs": int8 [rows, 5], "active": uint8 [rows, 15]}."""
    out = np.full((rows, V.ROW_WIDTH), V.NONE, dtype=V.ROW_DTYPE)
    sounding_p = np.zeros((rows, V.NUM_PITCHES), dtype=bool)
    sounding_i = np.zeros((rows, V.NUM_INSTRUMENTS), dtype=bool)
    now, ends = 0, {}                        # (pitch, instrument) -> end "time"
    t = 0
    while t < rows:
        offset = int(rng.integers(1, 25))
        now += offset
        ends = {k: e for k, e in ends.items() if e > now}
        if rng.random() < pause_prob:
            out[t, [V.OFFSET, V.DURATION]] = offset, 0
            out[t, V.BEAT] = rng.integers(-1, V.NUM_BEATS)
            _snapshot(ends, sounding_p[t], sounding_i[t])
            t += 1
            continue
        chord = min(int(rng.integers(1, max_chord + 1)), rows - t)
        pitches = np.sort(rng.choice(np.arange(1, V.NUM_PITCHES), chord, replace=False))
        beat = rng.integers(-1, V.NUM_BEATS)
        for k, pitch in enumerate(pitches):
            instrument = int(rng.integers(0, 3))           # a few instruments, as in real scores
            duration = int(rng.integers(1, V.NUM_TIME_CLASSES))
            out[t] = (offset if k == 0 else 0, beat, duration, pitch, instrument)
            _snapshot(ends, sounding_p[t], sounding_i[t])  # before this note is added
            ends[(int(pitch), instrument)] = now + duration
            t += 1
    return {"inputs": out, "active": V.pack_active(sounding_p, sounding_i)}


def _snapshot(ends: dict, pitches: np.ndarray, instruments: np.ndarray) -> None:
    for pitch, instrument in ends:
        pitches[pitch] = instruments[instrument] = True


def random_piece(seed: int, bars: int, min_rows: int = 1, max_rows: int = 40
                 ) -> list[dict[str, np.ndarray]]:
    """Consecutive bar samples of one random piece: bar 0 has the START context, bar b > 0
    the rows of bar b - 1. Keys as the batch contract (model/batch.py)."""
    rng = np.random.default_rng(seed)
    samples, previous = [], V.START_ROW[None, :].copy()
    for _ in range(bars):
        bar = random_bar(rng, int(rng.integers(min_rows, max_rows + 1)))
        samples.append({"context": previous, **bar, "metre": "4/4"})
        previous = bar["inputs"]
    return samples
