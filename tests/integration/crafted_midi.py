"""Hostile MIDI files, made byte by byte for the preprocessing limits tests (no external files)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: midi_bytes
from midi_bytes import smf, vlq  # noqa: E402


END_OF_TRACK = b"\x00\xff\x2f\x00"


def huge_deltas(n: int = 2000) -> bytes:
    """A note, then `n` delta times of 2**28 - 1 ticks each (~5e11 ticks: hundreds of millions of
    bars, under the reader's 2**40 tick bound), then a second note."""
    body = b"\x00\x90\x3c\x40" + b"\x00\x80\x3c\x00"
    body += b"".join(vlq(2**28 - 1) + b"\xff\x01\x00" for _ in range(n))   # empty text events
    body += b"\x00\x90\x40\x40\x60\x80\x40\x00"
    return smf(body + END_OF_TRACK)


def notes_in_one_bar(n: int = 1_000_000, tpq: int = 30_000) -> bytes:
    """`n` notes in running status, all in the first bar (at 30,000 ticks per quarter): groups of
    60 chord notes, each group one tick after the previous one, every note 1 tick long."""
    group = bytes((0, 36, 64)) + b"".join(bytes((0, 36 + i, 64)) for i in range(1, 60))
    group += bytes((1, 36, 0)) + b"".join(bytes((0, 36 + i, 0)) for i in range(1, 60))   # velocity 0: off
    events = b"\x00\x90\x24\x40\x01\x24\x00" + group * (n // 60)
    return smf(events + END_OF_TRACK, tpb=tpq)


def large_file(nbytes: int = 50 << 20) -> bytes:
    """A well-formed file of `nbytes` bytes: one track of text meta events."""
    chunk = b"\x00\xff\x01\x7f" + b"x" * 127
    body = b"\x00\x90\x3c\x40\x60\x80\x3c\x00" + chunk * (nbytes // len(chunk) + 1)
    return smf(body + END_OF_TRACK)


def nested_running_status(depth: int = 300_000) -> bytes:
    """One status byte carried by running status across `depth` interleaved meta events (which
    the MIDI spec says cancel it; readers differ): notes whose status is `depth` events away."""
    body = bytearray(b"\x00\x90\x3c\x40")
    for i in range(depth):
        body += b"\x00\xff\x01\x00"              # an empty text event
        body += bytes((1, 40 + i % 40, 64 * (i % 2)))   # a running-status note on / off
    return smf(bytes(body) + END_OF_TRACK)
