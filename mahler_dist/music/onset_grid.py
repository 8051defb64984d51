"""Onsets onto the grid: snapping, and repairing the gaps no time class can express.

Positions are model ticks (480 per beat of the range's metre) from the start of a metre range.
The grid is the 1/8 beat (60 ticks) and the 1/6 beat (80) in simple metres, the 1/6 beat alone
in compound ones. Where the two grids meet, two neighbouring onsets can be 20, 40 or 100 ticks
apart (1/24, 1/12, 5/24 beat), which no sum of classes expresses; one of them has to move.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mahler_dist.music.timing import Metre, decompose_gap

GAP_MOVED = "onset moved to a gap a time class expresses"
COARSE = "onset snapped to the beat or 16th, not the 32nd point beside it"

_BEAT = 480
_SEARCH = 160   # the farthest a gap repair moves an onset (1/3 beat), in model ticks


def snap_onsets(onsets: np.ndarray, metre: Metre) -> np.ndarray:
    """Model-tick onsets (float) -> nearest point of the fine grid (int): 1/8 and 1/6 beat, 1/6
    alone in compound metres; ties go to the duple grid."""
    return _nearest(onsets, None if metre.compound else 60, 80)


def _nearest(onsets: np.ndarray, duple: int | None, triple: int) -> np.ndarray:
    """The nearest multiple of `duple` or `triple` ticks (ties: duple; `duple` None: triple only)."""
    t = np.floor(onsets / triple + 0.5) * triple
    if duple is None:
        return t.astype(np.int64)
    d = np.floor(onsets / duple + 0.5) * duple
    return np.where(np.abs(t - onsets) < np.abs(d - onsets), t, d).astype(np.int64)


def snap_coarse_first(onsets: np.ndarray, metre: Metre, tracks: np.ndarray, exact_tolerance: float,
                      fast_gap: float) -> tuple[np.ndarray, int]:
    """Onsets snap to the coarse grid (1/4 and 1/3 beat; 1/3 in compound metres) unless the fine
    one (1/8, 1/6 beat) is meant: the onset is within `exact_tolerance` of a fine point (notated
    32nds), or its track plays fast there (three onsets in a row, each under `fast_gap` after the
    one before: a run of 32nds or sextuplets). Performed and staggered parts, a few ticks late or
    early, then land on the beat or the 16th they belong to, not on the 32nd point next to it.
    Returns (snapped, number of onsets that the fine grid alone would have put elsewhere)."""
    fine = snap_onsets(onsets, metre)
    coarse = _nearest(onsets, None if metre.compound else 120, 160)
    differ = fine != coarse
    if not differ.any():
        return fine, 0
    use_fine = np.abs(onsets - fine) <= exact_tolerance
    # a run: three onsets of one track in a row, each under fast_gap after the one before (one
    # close neighbour is a late chord note, not a run); a chord's notes share one onset
    key = tracks * (1 << 40) + np.round(onsets).astype(np.int64)
    unique, inverse = np.unique(key, return_inverse=True)
    small = ((unique[1:] >> 40) == (unique[:-1] >> 40)) & (unique[1:] - unique[:-1] < fast_gap)
    triple = np.zeros(len(unique) + 2, dtype=bool)        # triple[k + 2]: onsets k, k+1, k+2 are a run
    triple[2:len(unique)] = small[:-1] & small[1:]
    fast_onset = triple[2:] | triple[1:-1] | triple[:-2]   # onset k is in the run starting at k, k-1 or k-2
    fast = fast_onset[inverse.reshape(-1)]
    use_fine |= fast
    out = np.where(use_fine, fine, coarse)
    return out, int((differ & ~use_fine).sum())


@lru_cache(maxsize=None)
def _representable(metre: Metre) -> np.ndarray:
    """bool [bar_ticks + 1]: whether a gap of k model ticks is 0 or a sum of the metre's classes."""
    table = np.array([k == 0 or decompose_gap(k, metre) is not None for k in range(metre.bar_ticks + 1)])
    table.setflags(write=False)
    return table


def unreachable_gaps(u: np.ndarray, metre: Metre) -> np.ndarray:
    """For sorted unique onsets u: whether the gap from each one's reference (the previous onset
    in the same bar, else its bar line) is not representable."""
    bar = metre.bar_ticks
    ref = u - u % bar
    ref[1:] = np.where(u[:-1] // bar == u[1:] // bar, u[:-1], ref[1:])
    return ~_representable(metre)[u - ref]


def repair_gaps_forward(positions: np.ndarray, metre: Metre) -> np.ndarray:
    """The first quantiser's repair: walk forward and move each offending onset to the nearest
    representable distance from its (possibly already moved) predecessor. Can cascade: a move can
    make the next gap unrepresentable, so notes on the grid in the source move too."""
    out = positions.copy()
    bar = metre.bar_ticks
    prev = None
    for i in range(len(out)):
        pos = int(out[i])
        if prev is not None and pos < prev:
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


def repair_gaps_minimal(positions: np.ndarray, exact: np.ndarray, metre: Metre) -> np.ndarray:
    """Repair unrepresentable gaps by moving, for each one, a single onset of the offending pair -
    the one whose move costs least (distance from where the source has it) - to a grid point from
    which both of its gaps are representable. An onset on a beat never moves, and neither does
    any onset outside the pair, so nothing cascades.

    positions: snapped model-tick onsets, one per note, sorted; exact: their unsnapped values.
    Returns the repaired positions (still sorted)."""
    if len(positions) == 0:
        return positions
    u, first = np.unique(positions, return_index=True)
    bad = unreachable_gaps(u, metre)
    if not bad.any():
        return positions
    exact_u = exact[first].astype(np.float64)
    new_u = u.copy()
    ok = _representable(metre)
    bar = metre.bar_ticks
    step = 80 if metre.compound else 20
    on_grid = (lambda p: p % 80 == 0) if metre.compound else (lambda p: p % 60 == 0 or p % 80 == 0)

    def gap_ok(a: int, b: int) -> bool:
        """Onset b after onset a (a may be None: b is first) leaves a representable gap."""
        ref = a if a is not None and a // bar == b // bar else b - b % bar
        return bool(ok[b - ref])

    def candidates(i: int) -> tuple[float, int] | None:
        """The cheapest new place for onset i, keeping its neighbours where they are."""
        p = int(new_u[i])
        if p % _BEAT == 0:
            return None
        prev = int(new_u[i - 1]) if i > 0 else None
        nxt = int(new_u[i + 1]) if i + 1 < len(new_u) else None
        best = None
        for q in range(p - _SEARCH, p + _SEARCH + 1, step):
            if q < 0 or q == p or not on_grid(q) or (prev is not None and q < prev) or (nxt is not None and q > nxt):
                continue
            if (prev is None or q == prev or gap_ok(prev, q)) and (nxt is None or q == nxt or gap_ok(q, nxt)):
                cost = abs(q - exact_u[i])
                if best is None or cost < best[0]:
                    best = (cost, q)
        return best

    for i in np.flatnonzero(bad).tolist():
        prev = int(new_u[i - 1]) if i > 0 else None
        if gap_ok(prev, int(new_u[i])):   # an earlier repair (of the previous onset) fixed it
            continue
        nxt = int(new_u[i + 1]) if i + 1 < len(new_u) else None
        next_bad = nxt is not None and nxt != new_u[i] and not gap_ok(int(new_u[i]), nxt)
        options = []
        for j in (i, i - 1):
            if j >= 0:
                found = candidates(j)
                if found is not None:
                    # first: leave the next pair repaired too (moving onset i repairs both of its
                    # gaps; moving i - 1 leaves (i, i + 1) as it was); then the least extra distance
                    # from the source
                    left_bad = next_bad and j == i - 1
                    options.append((left_bad, found[0] - abs(new_u[j] - exact_u[j]), j, found[1]))
        if options:
            *_, j, q = min(options)
            new_u[j] = q
    return new_u[np.searchsorted(u, positions)]   # moves stay between the neighbours: still sorted
