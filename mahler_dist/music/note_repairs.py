"""Repairs on a Score's notes before they meet the grid (reference section 2.2, reworked).

grace_to_downbeat takes notes (int64 [N, 6], score.NoteCol columns, score ticks at 480 per
quarter); the others work on the onsets of one metre range in model ticks (so their windows can
be kept under the metre's grid step). Each returns what it repaired and how many it changed; the quantiser counts those under
"moved: <reason>" in Piece.stats. Each one is a switch of QuantizeOptions. All work per track
(the unit in which a performer or an engraver wrote a voice), vectorised except where a rule is
sequential by nature, and then only over the few notes it applies to.
"""

from __future__ import annotations

import numpy as np

from mahler_dist.music.score import NoteCol

START, END, TRACK = int(NoteCol.START), int(NoteCol.END), int(NoteCol.TRACK)

CLUSTERED = "onset clustered into its chord"
GRACE = "grace note onto the new metre's downbeat"
LEGATO = "end held to the next onset (legato)"
OVERLAP = "end cut at the next onset (overlap)"


def cluster_onsets(onsets: np.ndarray, tracks: np.ndarray, window: float) -> tuple[np.ndarray, int]:
    """Notes of a track starting less than `window` after the first onset of the track's current
    cluster join it (a chord played or entered a little staggered), and the whole cluster starts
    at the mean onset of its notes. Membership is measured from the cluster's first onset, not
    from the previous note's, so a fast run never chains into one chord. (The original moved
    the notes to the first onset; on humanised copies of the corpora the mean recovers more of
    the written onsets and durations: docs/decisions.md.)
    onsets: float, one unit (model ticks of a metre range). Returns (onsets, notes moved)."""
    if len(onsets) == 0:
        return onsets, 0
    order = np.lexsort((onsets, tracks))
    t, o = tracks[order], onsets[order]
    first = np.ones(len(o), dtype=bool)                  # one entry per distinct (track, onset)
    first[1:] = (t[1:] != t[:-1]) | (o[1:] != o[:-1])
    group = np.cumsum(first) - 1
    ut, uo = t[first], o[first]
    close = np.zeros(len(uo), dtype=bool)
    close[1:] = (ut[1:] == ut[:-1]) & (uo[1:] - uo[:-1] < window)
    if not close.any():
        return onsets, 0
    head = np.arange(len(uo))
    for i in np.flatnonzero(close).tolist():   # only onsets near their predecessor: sequential, few
        if uo[i] - uo[head[i - 1]] < window:
            head[i] = head[i - 1]
    notes_per_onset = np.bincount(group).astype(np.float64)
    mean = np.bincount(head, weights=uo * notes_per_onset) / np.maximum(np.bincount(head, weights=notes_per_onset), 1)
    out = onsets.astype(np.float64, copy=True)
    out[order] = mean[head][group]
    return out, int((out != onsets).sum())


def grace_to_downbeat(notes: np.ndarray, change_ticks: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, int]:
    """Notes starting less than windows[k] ticks before the time-signature change at
    change_ticks[k] (sorted) start on it: a grace note or a slightly early entry belongs to the
    new metre's first downbeat, not to a bar of the old metre of its own. A note moved past its
    end keeps its length."""
    if len(notes) == 0 or len(change_ticks) == 0:
        return notes, 0
    change_ticks = np.asarray(change_ticks, dtype=np.int64)
    windows = np.broadcast_to(np.asarray(windows, dtype=np.float64), change_ticks.shape)
    nxt = np.searchsorted(change_ticks, notes[:, START], side="right")
    has = nxt < len(change_ticks)
    k = np.minimum(nxt, len(change_ticks) - 1)
    target = change_ticks[k]
    move = has & (target - notes[:, START] < windows[k])
    if not move.any():
        return notes, 0
    out = notes.copy()
    length = out[move, END] - out[move, START]
    out[move, START] = target[move]
    out[move, END] = np.maximum(out[move, END], target[move] + length)
    return out, int(move.sum())


def _next_onset(onsets: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """For each note, the first onset in its track after its own (-1 where there is none)."""
    key = tracks * (1 << 40) + onsets
    unique = np.unique(key)
    idx = np.searchsorted(unique, key, side="right")
    valid = idx < len(unique)
    nxt = unique[np.minimum(idx, len(unique) - 1)]
    same_track = valid & ((nxt >> 40) == tracks)
    return np.where(same_track, nxt & ((1 << 40) - 1), -1)


def legato_and_overlap(onsets: np.ndarray, ends: np.ndarray, tracks: np.ndarray, off_grid: np.ndarray,
                       legato_fraction: float | None, legato_max_gap: float,
                       overlap_fraction: float | None, quarter: float) -> tuple[np.ndarray, int, int]:
    """Ends that are off the grid and near the next onset of their track snap to it (an end on the
    grid is as written: a quantised piece quantises to itself).

    onsets: snapped (int), ends: unsnapped (float), in one unit (model ticks of the range);
    `quarter`: a quarter note in that unit.
    Legato (`legato_fraction` not None): a note followed by a silence shorter than
    `legato_max_gap` and at most `legato_fraction` of its length is held to the next onset.
    A staccato note (a silence as long as a good part of the note) keeps its length - the
    original held every note under two beats over any silence under a quarter.
    Overlap (`overlap_fraction` not None, the original's rule): a note shorter than a quarter
    that overlaps the next onset by less than `overlap_fraction` of its length ends there.
    Returns (ends, held, cut)."""
    if len(onsets) == 0:
        return ends, 0, 0
    nxt = _next_onset(onsets, tracks)
    length = ends - onsets
    gap = nxt - ends
    has = (nxt >= 0) & off_grid
    held = np.zeros(len(onsets), dtype=bool)
    cut = np.zeros(len(onsets), dtype=bool)
    if legato_fraction is not None:
        held = has & (gap > 0) & (gap < legato_max_gap) & (gap <= legato_fraction * length)
    if overlap_fraction is not None:
        cut = has & (gap < 0) & (length < quarter) & (-gap < overlap_fraction * length)
    change = held | cut
    if not change.any():
        return ends, 0, 0
    return np.where(change, nxt, ends), int(held.sum()), int(cut.sum())
