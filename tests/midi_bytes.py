"""Standard MIDI Files built in tests, independent of the reader under test (tests/ is on sys.path
through tests/conftest.py): raw bytes for hostile files, mido for well-formed ones."""

from __future__ import annotations

import io


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity (at most 4 bytes, n < 2**28)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def smf(*bodies: bytes, tpb: int = 480, fmt: int = 1) -> bytes:
    """An SMF of raw track bodies (each MTrk chunk's bytes)."""
    head = (b"MThd" + (6).to_bytes(4, "big") + fmt.to_bytes(2, "big") + len(bodies).to_bytes(2, "big")
            + tpb.to_bytes(2, "big"))
    return head + b"".join(b"MTrk" + len(b).to_bytes(4, "big") + b for b in bodies)


def smf_of_messages(*tracks, tpb: int = 480, fmt: int = 1) -> bytes:
    """An SMF from tracks given as lists of (absolute tick, mido message); events at one tick stay
    in the order given."""
    import mido

    midi = mido.MidiFile(type=fmt, ticks_per_beat=tpb)
    for events in tracks:
        track, now = mido.MidiTrack(), 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()
