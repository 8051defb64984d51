"""Pitch transposition of bar samples at load time (MusicVAE trains with +-5 semitones).

A bar and its context are shifted together by one interval, drawn per (seed, epoch, sample) so a
resumed epoch draws the same intervals; the interval is limited so every pitch of both bars stays
in the vocabulary (0..NUM_PITCHES-1), and the active pitch sets move with the notes. Instruments,
rhythm and the START row are untouched. Pure numpy (the loader's worker processes run it).
"""

from __future__ import annotations

import numpy as np

from mahler_dist.music import vocab as V


def _pitch_bounds(rows: np.ndarray, active: np.ndarray | None) -> tuple[int, int]:
    """(lowest, highest) pitch index of the rows' notes and active sets; (V.NUM_PITCHES, -1) if none."""
    pitches = rows[:, V.PITCH][rows[:, V.PITCH] >= 0].astype(np.int64)
    lo, hi = (int(pitches.min()), int(pitches.max())) if len(pitches) else (V.NUM_PITCHES, -1)
    if active is not None and len(active):
        sounding = np.flatnonzero(V.unpack_active(active)[0].any(axis=0))
        if len(sounding):
            lo, hi = min(lo, int(sounding[0])), max(hi, int(sounding[-1]))
    return lo, hi


def _shift(rows: np.ndarray, active: np.ndarray | None, interval: int) -> tuple[np.ndarray, np.ndarray | None]:
    rows = rows.copy()
    notes = rows[:, V.PITCH] >= 0
    rows[notes, V.PITCH] = rows[notes, V.PITCH] + interval
    if active is not None and len(active):
        pitches, instruments = V.unpack_active(active)
        pitches = np.roll(pitches, interval, axis=-1)   # nothing wraps: the bounds were checked
        active = V.pack_active(pitches, instruments)
    return rows, active


def transpose_sample(sample: dict, interval_range: int, rng: np.random.Generator) -> dict:
    """`sample` (context, inputs, active) moved by a random interval in [-range, +range] that keeps
    every pitch of the bar and its context in the vocabulary; unchanged when range is 0."""
    if interval_range <= 0:
        return sample
    lo_i, hi_i = _pitch_bounds(sample["inputs"], sample.get("active"))
    lo_c, hi_c = _pitch_bounds(sample["context"], None)
    lo, hi = min(lo_i, lo_c), max(hi_i, hi_c)
    if hi < 0:
        return sample                                       # no pitches: nothing to move
    down, up = min(interval_range, lo), min(interval_range, V.NUM_PITCHES - 1 - hi)
    interval = int(rng.integers(-down, up + 1))
    if interval == 0:
        return sample
    inputs, active = _shift(sample["inputs"], sample.get("active"), interval)
    context, _ = _shift(sample["context"], None, interval)
    return {**sample, "inputs": inputs, "active": active, "context": context}
