"""At most N instrument classes sounding at once (reference 2.6, channel simulation).

A MIDI file has 15 melodic channels, and the writer gives each sounding instrument class one
(midi_io.assign_channels), so a piece that needs a 16th at some moment cannot be played back as
the model sees it. The original cancelled such notes; so do we, and count them.
"""

from __future__ import annotations

import heapq

import numpy as np

DROPPED = "no free MIDI channel (too many instruments at once)"


def limit_instruments(starts: np.ndarray, ends: np.ndarray, instruments: np.ndarray, limit: int) -> np.ndarray:
    """bool keep-mask: False for each note that starts while `limit` other instrument classes sound.
    Notes are taken in start order; a class holds its channel until its last sounding note ends."""
    keep = np.ones(len(starts), dtype=bool)
    if limit <= 0 or len(np.unique(instruments)) <= limit:
        return keep        # the common case: cannot exceed the limit
    sounding: dict[int, int] = {}        # class -> end of its latest note
    heap: list[tuple[int, int]] = []     # (end, class) candidates to free
    for i in np.lexsort((ends, starts)).tolist():
        s, e, c = int(starts[i]), int(ends[i]), int(instruments[i])
        while heap and heap[0][0] <= s:
            end, cls = heapq.heappop(heap)
            if sounding.get(cls) == end:
                del sounding[cls]
        if c not in sounding and len(sounding) >= limit:
            keep[i] = False
            continue
        if e > sounding.get(c, -1):
            sounding[c] = e
            heapq.heappush(heap, (e, c))
    return keep
