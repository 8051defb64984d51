"""Hostile MIDI files, made byte by byte for the preprocessing limits tests (no external files)."""

from __future__ import annotations


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity (at most 4 bytes, n < 2**28)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi(*tracks: bytes, tpq: int = 480, fmt: int = 1) -> bytes:
    head = b"MThd" + (6).to_bytes(4, "big") + fmt.to_bytes(2, "big") + len(tracks).to_bytes(2, "big") + tpq.to_bytes(2, "big")
    return head + b"".join(b"MTrk" + len(t).to_bytes(4, "big") + t for t in tracks)


END_OF_TRACK = b"\x00\xff\x2f\x00"


def huge_deltas(n: int = 2000) -> bytes:
    """A note, then `n` delta times of 2**28 - 1 ticks each (~5e11 ticks: hundreds of millions of
    bars, under the reader's 2**40 tick bound), then a second note."""
    body = b"\x00\x90\x3c\x40" + b"\x00\x80\x3c\x00"
    body += b"".join(vlq(2**28 - 1) + b"\xff\x01\x00" for _ in range(n))   # empty text events
    body += b"\x00\x90\x40\x40\x60\x80\x40\x00"
    return midi(body + END_OF_TRACK)


def notes_in_one_bar(n: int = 1_000_000, tpq: int = 30_000) -> bytes:
    """`n` notes in running status, all in the first bar (at 30,000 ticks per quarter): groups of
    60 chord notes, each group one tick after the previous one, every note 1 tick long."""
    group = bytes((0, 36, 64)) + b"".join(bytes((0, 36 + i, 64)) for i in range(1, 60))
    group += bytes((1, 36, 0)) + b"".join(bytes((0, 36 + i, 0)) for i in range(1, 60))   # velocity 0: off
    events = b"\x00\x90\x24\x40\x01\x24\x00" + group * (n // 60)
    return midi(events + END_OF_TRACK, tpq=tpq)


def large_file(nbytes: int = 50 << 20) -> bytes:
    """A well-formed file of `nbytes` bytes: one track of text meta events."""
    chunk = b"\x00\xff\x01\x7f" + b"x" * 127
    body = b"\x00\x90\x3c\x40\x60\x80\x3c\x00" + chunk * (nbytes // len(chunk) + 1)
    return midi(body + END_OF_TRACK)


def nested_running_status(depth: int = 300_000) -> bytes:
    """One status byte carried by running status across `depth` interleaved meta events (which
    the MIDI spec says cancel it; readers differ): notes whose status is `depth` events away."""
    body = bytearray(b"\x00\x90\x3c\x40")
    for i in range(depth):
        body += b"\x00\xff\x01\x00"              # an empty text event
        body += bytes((1, 40 + i % 40, 64 * (i % 2)))   # a running-status note on / off
    return midi(bytes(body) + END_OF_TRACK)
