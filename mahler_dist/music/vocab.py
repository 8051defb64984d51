"""Sizes and the compact row layout shared by every stage (reference 1.1, DESIGN.md section 5).

A row is a small int vector (offset, beat, duration, pitch, instrument) with -1 for "none":
- offset, duration: time class 0..59 (duration 0 = pause row, which only advances time);
- beat: eighth-note slot 0..7, or -1 off those slots;
- pitch: 0..95 (MIDI 17..112), -1 on pause rows;  instrument: 0..22, -1 on pause rows.
A row whose duration is -1 is the START token (the context of a piece's first bar).
The sets of pitches and instruments sounding at a row's onset are bit-packed: 96 + 23 bits in
ACTIVE_BYTES bytes (little bit order). One-hot expansion happens on the training device.
"""

from __future__ import annotations

import numpy as np

NUM_TIME_CLASSES = 60
NUM_BEATS = 8
NUM_PITCHES = 96
PITCH_LOW = 17           # MIDI pitch of index 0
NUM_INSTRUMENTS = 23

OFFSET, BEAT, DURATION, PITCH, INSTRUMENT = range(5)
ROW_WIDTH = 5
ROW_DTYPE = np.int8      # every field fits in -1..95
NONE = -1

#: The START token row.
START_ROW = np.full(ROW_WIDTH, NONE, dtype=ROW_DTYPE)

ACTIVE_BITS = NUM_PITCHES + NUM_INSTRUMENTS   # 119
ACTIVE_BYTES = (ACTIVE_BITS + 7) // 8         # 15


def pitch_index(midi_pitch: int) -> int:
    """MIDI pitch -> 0..95, folding by octaves into 18..112 as the original (reference 1.4:
    its `<= 17` test means index 0, MIDI 17, is never produced). Lossy: the octave of notes
    outside the range is changed."""
    while midi_pitch <= PITCH_LOW:
        midi_pitch += 12
    while midi_pitch > PITCH_LOW + NUM_PITCHES - 1:
        midi_pitch -= 12
    return midi_pitch - PITCH_LOW


def pack_active(pitch_sets: np.ndarray, instrument_sets: np.ndarray) -> np.ndarray:
    """bool [N, 96] and bool [N, 23] -> uint8 [N, ACTIVE_BYTES]."""
    bits = np.concatenate([pitch_sets, instrument_sets], axis=-1).astype(np.uint8)
    return np.packbits(bits, axis=-1, bitorder="little")


def unpack_active(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [..., ACTIVE_BYTES] -> (bool [..., 96], bool [..., 23])."""
    bits = np.unpackbits(packed, axis=-1, count=ACTIVE_BITS, bitorder="little").astype(bool)
    return bits[..., :NUM_PITCHES], bits[..., NUM_PITCHES:]
