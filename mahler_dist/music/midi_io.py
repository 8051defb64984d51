"""MIDI bytes <-> `Score`: the only module that touches MIDI files (and the only one importing mido).

`read_midi` parses a Standard MIDI File with a byte-level reader written for this hot path (about
8x faster than building mido messages). It accepts exactly what `mido.MidiFile` (1.3, clip=False)
accepts, rejecting the same malformed input (tests compare the two), and additionally rejects
SMPTE time division and files without usable notes. Every failure is a `MidiReadError` with a
short reason. What it does to the music (each is lossy and says so here):

- ticks are resampled to TICKS_PER_QUARTER (480), rounding half up: round(tick * 480 / tpb);
- SMF type 0 and 1 tracks play in parallel; type 2 tracks are played one after another (each starts
  where the previous ended); unknown format numbers are read like type 1;
- notes are paired per track and (channel, pitch): a note_on while that key sounds closes the old
  note at the new onset (MahlerNet's rule), and a note_off at that same tick belongs to the closed
  note, as if note-offs sorted first at equal ticks; otherwise a note_off (or a note_on with velocity
  0) closes the sounding note. Unmatched note_offs are ignored; notes never closed end at the last
  event of their track;
- program of a note = the last program_change on its channel, in any track, at or before its onset
  (ties at one tick: the later one in file order wins); 0 if there is none;
- velocities, controllers, pitch bend, key signatures, lyrics and sysex are discarded;
- drum notes (channel index 9) are dropped (dropped["drum channel"]), then notes whose end equals
  their start after resampling (dropped["zero length"]);
- tempo map: sorted, one change per tick (the last wins), TempoChange(0, 500000) prepended when the
  first change is after tick 0 or there is none; tempo 0 (meaningless) is ignored;
- metre map: sorted, one per tick (the last wins), repeats of the same metre merged; no implicit 4/4.

`write_midi` writes a type-1 file (conductor track + one track per channel, velocity 64) that reads
back to the same notes, tempos and metres. `assign_channels` gives each program its own channel.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import mido
import numpy as np

from mahler_dist.errors import MidiReadError
from mahler_dist.music.score import (
    CHANNEL,
    END,
    NOTE_COLUMNS,
    PITCH,
    PROGRAM,
    START,
    TICKS_PER_QUARTER,
    TRACK,
    MetreChange,
    Score,
    TempoChange,
    sort_notes,
)

__all__ = ["DRUM_CHANNEL", "DEFAULT_TEMPO", "VELOCITY", "assign_channels", "read_midi", "write_midi"]

DRUM_CHANNEL = 9  # channel index (MIDI channel 10)
DEFAULT_TEMPO = 500_000  # us per quarter (120 bpm)
VELOCITY = 64  # the original's fixed output velocity (reference 5.1)
DROP_DRUMS = "drum channel"
DROP_ZERO_LENGTH = "zero length"

_MAX_CHUNK = 1_000_000  # mido's MAX_MESSAGE_LENGTH: longer meta/sysex events are rejected as it does
# Total length (status included) of the system messages 0xF1..0xFE that mido accepts in a file.
_SYSTEM_LENGTH = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFE: 1}


class _Reject(Exception):
    """Internal: the file is unusable; `args[0]` is the reason."""


# --------------------------------------------------------------------------------------------------
# Reading


def read_midi(source: str | os.PathLike | bytes, name: str | None = None) -> Score:
    """Parse a MIDI file (a path, or its raw bytes) into a `Score` at 480 ticks per quarter.

    Lossy as described in the module docstring (drums, zero-length notes, velocities, controllers).
    Raises `MidiReadError(name, reason)` for any file that cannot be turned into a Score, including
    files without pitched notes; never another exception type.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name if name is not None else "<bytes>"
        data = bytes(source)
    else:
        try:
            label = name if name is not None else os.fspath(source)
            data = Path(source).read_bytes()
        except TypeError as exc:
            raise MidiReadError(str(name or source), f"not a path or bytes ({type(source).__name__})") from exc
        except OSError as exc:
            raise MidiReadError(label, f"cannot read file ({exc.strerror or exc})") from None
    try:
        return _read(data)
    except _Reject as exc:
        raise MidiReadError(label, exc.args[0]) from None
    except Exception as exc:  # a bug here must still not escape as another type (pipeline contract)
        raise MidiReadError(label, f"internal error while parsing ({type(exc).__name__}: {exc})") from exc


def _read(d: bytes) -> Score:
    fmt, ntracks, tpb, pos = _read_header(d)
    notes = _Collector()
    track_end = 0  # where the previous track ended: type 2 plays tracks one after another
    last_tick = 0
    for k in range(ntracks):
        if pos + 8 > len(d):
            if pos >= len(d):
                raise _Reject(f"truncated file (the header declares {ntracks} tracks, found {k})")
            raise _Reject(f"truncated file (incomplete chunk header of track {k})")
        chunk = d[pos : pos + 4]
        if chunk != b"MTrk":
            raise _Reject(f"no MTrk header at start of track {k} (found chunk {chunk!r})")
        start = pos + 8
        end = start + int.from_bytes(d[pos + 4 : start], "big")
        pos, tick = _parse_track(d, start, end, k, track_end if fmt == 2 else 0, notes)
        last_tick = max(last_tick, tick)
        track_end = tick
    return notes.to_score(tpb, last_tick)


def _read_header(d: bytes) -> tuple[int, int, int, int]:
    n = len(d)
    if n == 0:
        raise _Reject("empty file (0 bytes)")
    if d[:4] != b"MThd":
        raise _Reject(_not_midi_reason(d))
    if n < 14:
        raise _Reject(f"truncated file (header chunk, {n} bytes)")
    size = int.from_bytes(d[4:8], "big")
    if size < 6:
        raise _Reject(f"invalid header chunk (length {size}, expected 6)")
    fmt = int.from_bytes(d[8:10], "big", signed=True)
    ntracks = int.from_bytes(d[10:12], "big", signed=True)
    division = int.from_bytes(d[12:14], "big", signed=True)
    if division < 0:
        raise _Reject("SMPTE time division is not supported")
    if division == 0:
        raise _Reject("invalid time division (0 ticks per quarter)")
    if ntracks <= 0:
        raise _Reject(f"no MTrk track chunks (the header declares {ntracks} tracks)")
    return fmt, ntracks, division, 8 + size


def _not_midi_reason(d: bytes) -> str:
    head = d[:8]
    if d[:4] == b"RIFF" and d[8:12] == b"RMID":
        what = "RIFF RMID wrapper; the MIDI data inside is not unpacked"
    elif len(d) >= 128 and d[0] == 0 and 1 <= d[1] <= 63 and d[74] == 0 and d[82] == 0:
        what = "MacBinary header; the data behind it is not unpacked"
    elif d[:8] == b"SMF2CLIP":
        what = "MIDI 2.0 Clip file, not a Standard MIDI File"
    elif d[:4] == b"PK\x03\x04":
        what = "ZIP archive"
    elif d[:8] == b"CAKEWALK":
        what = "Cakewalk .wrk project"
    elif d[:4] == b"CTMF":
        what = "Creative Music File"
    elif not any(d):
        return f"not a MIDI file (all {len(d)} bytes are zero)"
    else:
        what = "no MThd header"
    return f"not a MIDI file ({what}; starts with {head!r})"


class _Collector:
    """Notes, program changes, tempos and metres of one file, as flat lists (raw ticks)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.keys: list[int] = []  # channel << 7 | pitch
        self.track_counts: list[int] = []
        self.pc_ticks: list[int] = []
        self.pc_keys: list[int] = []  # channel << 7 | program
        self.tempos: list[tuple[int, int]] = []
        self.metres: list[tuple[int, int, int]] = []

    def to_score(self, tpb: int, last_tick: int) -> Score:
        starts = np.array(self.starts, dtype=np.int64)
        ends = np.array(self.ends, dtype=np.int64)
        keys = np.array(self.keys, dtype=np.int64)
        channels = keys >> 7
        programs = self._programs(starts, channels)
        tracks = np.repeat(np.arange(len(self.track_counts), dtype=np.int64), self.track_counts)
        source_notes = len(starts)
        if source_notes == 0:
            raise _Reject("file contains no notes")

        starts, ends = _resample(starts, tpb), _resample(ends, tpb)
        dropped: Counter = Counter()
        keep = channels != DRUM_CHANNEL
        if not keep.all():
            dropped[DROP_DRUMS] = int(source_notes - keep.sum())
            if not keep.any():
                raise _Reject("file contains no pitched notes (only drums)")
        nonzero = ends != starts
        zero = keep & ~nonzero
        if zero.any():
            dropped[DROP_ZERO_LENGTH] = int(zero.sum())
        keep &= nonzero
        if not keep.any():
            raise _Reject("file contains no pitched notes of non-zero length")

        notes = np.empty((int(keep.sum()), len(NOTE_COLUMNS)), dtype=np.int64)
        notes[:, START] = starts[keep]
        notes[:, END] = ends[keep]
        notes[:, PITCH] = keys[keep] & 0x7F
        notes[:, PROGRAM] = programs[keep]
        notes[:, CHANNEL] = channels[keep]
        notes[:, TRACK] = tracks[keep]
        end_tick = max(int(_resample(np.array([last_tick]), tpb)[0]), int(notes[:, END].max()))
        return Score(
            notes=sort_notes(notes),
            tempos=self._tempo_map(tpb),
            metres=self._metre_map(tpb),
            end_tick=end_tick,
            source_notes=source_notes,
            dropped=dropped,
        )

    def _programs(self, starts: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Last program_change on the note's channel at or before its onset (raw ticks), else 0."""
        if not self.pc_ticks:
            return np.zeros(len(starts), dtype=np.int64)
        pc_ticks = np.array(self.pc_ticks, dtype=np.int64)
        pc_keys = np.array(self.pc_keys, dtype=np.int64)
        pc_channels = pc_keys >> 7
        order = np.lexsort((np.arange(len(pc_ticks)), pc_ticks, pc_channels))  # stable: file order
        pc_channels, pc_ticks, pc_programs = pc_channels[order], pc_ticks[order], pc_keys[order] & 0x7F
        span = int(max(pc_ticks.max(), starts.max(initial=0))) + 1
        idx = np.searchsorted(pc_channels * span + pc_ticks, channels * span + starts, side="right") - 1
        found = (idx >= 0) & (pc_channels[np.maximum(idx, 0)] == channels)
        return np.where(found, pc_programs[np.maximum(idx, 0)], 0)

    def _tempo_map(self, tpb: int) -> list[TempoChange]:
        by_tick: dict[int, int] = {}
        for tick, tempo in sorted(
            ((_resample_int(t, tpb), v) for t, v in self.tempos if v > 0), key=lambda e: e[0]
        ):
            by_tick[tick] = tempo  # stable sort: the last in file order wins
        if 0 not in by_tick:
            by_tick[0] = DEFAULT_TEMPO
        return [TempoChange(t, v) for t, v in sorted(by_tick.items())]

    def _metre_map(self, tpb: int) -> list[MetreChange]:
        by_tick: dict[int, tuple[int, int]] = {}
        for tick, num, den in sorted(((_resample_int(t, tpb), n, m) for t, n, m in self.metres),
                                     key=lambda e: e[0]):
            by_tick[tick] = (num, den)
        metres: list[MetreChange] = []
        for tick, (num, den) in sorted(by_tick.items()):
            if not metres or (metres[-1].numerator, metres[-1].denominator) != (num, den):
                metres.append(MetreChange(tick, num, den))
        return metres


def _resample(ticks: np.ndarray, tpb: int) -> np.ndarray:
    if tpb == TICKS_PER_QUARTER:
        return ticks
    return (ticks * (2 * TICKS_PER_QUARTER) + tpb) // (2 * tpb)


def _resample_int(tick: int, tpb: int) -> int:
    return (tick * (2 * TICKS_PER_QUARTER) + tpb) // (2 * tpb)


def _parse_track(d: bytes, i: int, end: int, k: int, t: int, out: _Collector) -> tuple[int, int]:
    """Parse track chunk `k` (events d[i:end]) starting at tick `t`; return (position, last tick).

    Mirrors mido's read_track: it stops only when the position hits `end` exactly (an event that
    overruns its chunk reads on into what follows, which then ends in an error), running status
    also follows system messages, and a data byte after a sysex running status is skipped.
    """
    starts, ends, keys = out.starts, out.ends, out.keys
    first_note = len(starts)
    sounding: dict[int, int] = {}  # key -> index of its open note
    retriggered: dict[int, int] = {}  # key -> tick at which a note_on closed the previous note
    last_status = -1
    try:
        while i != end:
            b = d[i]
            i += 1
            if b > 127:  # variable-length delta time
                delta = b & 127
                while True:
                    b = d[i]
                    i += 1
                    delta = (delta << 7) | (b & 127)
                    if b < 128:
                        break
                t += delta
            else:
                t += b
            status = d[i]
            i += 1
            if status < 128:  # running status: this byte is the first data byte
                if last_status < 0:
                    raise _Reject(f"running status without a preceding status byte in track {k}")
                status = last_status
                if status != 0xF0 and status != 0xF7:  # mido drops that byte before a sysex
                    if _SYSTEM_LENGTH.get(status) == 1:
                        raise _Reject(f"running status after a one-byte system message in track {k}")
                    i -= 1
            elif status != 0xFF:
                last_status = status

            if status < 0xF0:
                kind = status & 0xF0
                if kind == 0x90 or kind == 0x80:
                    pitch = d[i]
                    velocity = d[i + 1]
                    i += 2
                    if pitch > 127 or velocity > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    key = (status & 0x0F) << 7 | pitch
                    if velocity and kind == 0x90:
                        old = sounding.get(key)
                        if old is not None:  # retrigger: the old note ends here
                            ends[old] = t
                            retriggered[key] = t
                        sounding[key] = len(starts)
                        starts.append(t)
                        ends.append(-1)
                        keys.append(key)
                    else:
                        if retriggered and retriggered.pop(key, -1) == t:
                            continue  # the note_off of the note a note_on just closed at this tick
                        old = sounding.pop(key, None)
                        if old is not None:
                            ends[old] = t
                elif kind == 0xC0:
                    program = d[i]
                    i += 1
                    if program > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    out.pc_ticks.append(t)
                    out.pc_keys.append((status & 0x0F) << 7 | program)
                elif kind == 0xD0:
                    if d[i] > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += 1
                else:  # 0xA0 aftertouch, 0xB0 control change, 0xE0 pitch bend
                    if d[i] > 127 or d[i + 1] > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += 2
            elif status == 0xFF:
                i = _meta_event(d, i, t, k, out)
            elif status == 0xF0 or status == 0xF7:
                length, i = _varint(d, i)
                if length > _MAX_CHUNK:
                    raise _Reject(f"sysex length {length} exceeds {_MAX_CHUNK} bytes in track {k}")
                i += length
                if i > len(d):
                    raise IndexError
            else:
                length = _SYSTEM_LENGTH.get(status)
                if length is None:
                    raise _Reject(f"undefined status byte 0x{status:02x} in track {k}")
                if length > 1:
                    if max(d[i : i + length - 1]) > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += length - 1
                    if i > len(d):
                        raise IndexError
    except IndexError:
        raise _Reject(f"truncated file (unexpected end of data in track {k})") from None
    for old in sounding.values():  # never terminated: close at the end of the track
        ends[old] = t
    out.track_counts.append(len(starts) - first_note)
    return i, t


def _varint(d: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        b = d[i]
        i += 1
        value = (value << 7) | (b & 127)
        if b < 128:
            return value, i


def _meta_event(d: bytes, i: int, t: int, k: int, out: _Collector) -> int:
    """Parse the meta event after its 0xFF status byte; return the position after it.

    Rejects exactly the meta events that mido cannot decode (short tempo, time or key signature,
    SMPTE offset, sequence number or channel prefix data; unknown keys or SMPTE frame rates).
    """
    mtype = d[i]
    length, j = _varint(d, i + 1)
    if length > _MAX_CHUNK:
        raise _Reject(f"meta event length {length} exceeds {_MAX_CHUNK} bytes in track {k}")
    i = j + length
    if i > len(d):
        raise IndexError
    if mtype == 0x51:
        if length < 3:
            raise _Reject(f"invalid tempo event ({length} data bytes) in track {k}")
        out.tempos.append((t, d[j] << 16 | d[j + 1] << 8 | d[j + 2]))
    elif mtype == 0x58:
        if length < 4:
            raise _Reject(f"invalid time signature ({length} data bytes) in track {k}")
        out.metres.append((t, d[j], 2 ** d[j + 1]))
    elif mtype == 0x59:
        if length < 2:
            raise _Reject(f"invalid key signature ({length} data bytes) in track {k}")
        key = d[j] - 256 if d[j] > 127 else d[j]
        mode = d[j + 1]
        if not (-7 <= key <= 7 and mode in (0, 1)):
            accidentals = f"{key} sharps" if key >= 0 else f"{-key} flats"
            raise _Reject(f"invalid key signature ({accidentals}, mode {mode}) in track {k}")
    elif mtype == 0x54:
        if length < 5 or d[j] >> 5 > 3:
            raise _Reject(f"invalid SMPTE offset event in track {k}")
    elif (mtype == 0x00 and length == 1) or (mtype == 0x20 and length == 0):
        raise _Reject(f"invalid meta event 0x{mtype:02x} ({length} data bytes) in track {k}")
    return i


# --------------------------------------------------------------------------------------------------
# Writing


def write_midi(score: Score, ticks_per_beat: int = TICKS_PER_QUARTER) -> bytes:
    """Write `score` as a type-1 MIDI file and return its bytes.

    Track 0 (conductor) holds the tempo map, the time signatures and the end of the piece; then one
    track per channel used, in channel order, with a program_change at tick 0 and another wherever
    a note's program differs from the previous note's on that channel. Notes are written on their
    CHANNEL column as given (see `assign_channels`) with velocity 64, note_offs before note_ons at a
    tick. Lossy: the TRACK column is not kept, and a note overlapping a later note of the same
    (channel, pitch) is cut at that note's onset (as `read_midi` would read it anyway); notes of one
    channel that start at one tick must share a program. Ticks are rescaled when ticks_per_beat != 480.
    """
    if not 1 <= ticks_per_beat <= 0x7FFF:
        raise ValueError(f"ticks_per_beat must be in 1..32767, got {ticks_per_beat}")
    notes = np.asarray(score.notes, dtype=np.int64).reshape(-1, len(NOTE_COLUMNS))
    if len(notes):
        if notes[:, [START, END]].min() < 0 or (notes[:, END] < notes[:, START]).any():
            raise ValueError("notes must have 0 <= start <= end")
        if not (0 <= notes[:, CHANNEL].min() and notes[:, CHANNEL].max() <= 15):
            raise ValueError("note channels must be in 0..15 (use assign_channels)")

    def scale(tick: int) -> int:
        if ticks_per_beat == TICKS_PER_QUARTER:
            return int(tick)
        return (int(tick) * 2 * ticks_per_beat + TICKS_PER_QUARTER) // (2 * TICKS_PER_QUARTER)

    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    conductor: list[tuple[int, int, mido.MetaMessage]] = []
    for change in score.metres:
        conductor.append((scale(change.tick), 0, mido.MetaMessage(
            "time_signature", numerator=int(change.numerator), denominator=int(change.denominator),
            clocks_per_click=24, notated_32nd_notes_per_beat=8)))
    for change in score.tempos:
        conductor.append((scale(change.tick), 1, mido.MetaMessage("set_tempo", tempo=int(change.us_per_quarter))))
    last_end = int(notes[:, END].max()) if len(notes) else 0
    midi.tracks.append(_to_track(conductor, scale(max(score.end_tick, last_end))))

    for channel in np.unique(notes[:, CHANNEL]):
        ch = notes[notes[:, CHANNEL] == channel]
        ch = ch[np.lexsort((ch[:, PITCH], ch[:, START]))]
        events: list[tuple[int, int, mido.Message]] = []
        program = -1
        for start, end, pitch, prog in ch[:, [START, END, PITCH, PROGRAM]].tolist():
            if prog != program:
                events.append((scale(start) if program >= 0 else 0, 1,
                               mido.Message("program_change", channel=int(channel), program=prog)))
                program = prog
        end_col = _cut_overlaps(ch)
        for start, end, pitch in zip(ch[:, START].tolist(), end_col.tolist(), ch[:, PITCH].tolist()):
            events.append((scale(start), 2, mido.Message("note_on", channel=int(channel), note=pitch,
                                                         velocity=VELOCITY)))
            events.append((scale(end), 0, mido.Message("note_off", channel=int(channel), note=pitch,
                                                       velocity=0)))
        midi.tracks.append(_to_track(events, None))
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def _cut_overlaps(ch: np.ndarray) -> np.ndarray:
    """Ends of one channel's notes (sorted by start), each cut at the next onset of its pitch."""
    ends = ch[:, END].copy()
    order = np.lexsort((ch[:, START], ch[:, PITCH]))
    same_pitch_next = ch[order[1:], PITCH] == ch[order[:-1], PITCH]
    nxt_start = ch[order[1:], START]
    cut = same_pitch_next & (nxt_start < ends[order[:-1]])
    ends[order[:-1][cut]] = nxt_start[cut]
    return ends


def _to_track(events: list, end_tick: int | None) -> mido.MidiTrack:
    events.sort(key=lambda e: (e[0], e[1]))  # stable: offs (0), program changes (1), ons (2)
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    last = now if end_tick is None else max(now, end_tick)
    track.append(mido.MetaMessage("end_of_track", time=last - now))
    return track


# --------------------------------------------------------------------------------------------------
# Channels


def assign_channels(notes: np.ndarray) -> np.ndarray:
    """Return a copy of `notes` whose CHANNEL gives each distinct PROGRAM its own channel.

    Channel 9 (drums) is never used. Programs are taken in order of first onset; while more than 15
    programs are in use, a new program reuses the channel whose program stops sounding earliest
    (the original's rule, reference 5.1), so two programs can then share a channel in time.
    """
    notes = np.array(notes, dtype=np.int64).reshape(-1, len(NOTE_COLUMNS))
    if len(notes) == 0:
        return notes
    programs = np.unique(notes[:, PROGRAM])
    spans = []
    for program in programs.tolist():
        mine = notes[:, PROGRAM] == program
        spans.append((int(notes[mine, START].min()), int(notes[mine, END].max()), program))
    spans.sort()
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    busy_until: dict[int, int] = {}  # channel -> end of the last program placed on it
    channel_of: dict[int, int] = {}
    for _, last, program in spans:
        if free:
            channel = free.pop(0)
        else:
            channel = min(busy_until, key=lambda c: (busy_until[c], c))
        busy_until[channel] = last
        channel_of[program] = channel
    lookup = np.zeros(int(programs.max()) + 1, dtype=np.int64)
    for program, channel in channel_of.items():
        lookup[program] = channel
    notes[:, CHANNEL] = lookup[notes[:, PROGRAM]]
    return notes
