"""MIDI bytes <-> `Score`: the only module that reads or writes MIDI files.

`read_midi` parses a Standard MIDI File with a byte-level reader written for this hot path (about
10x faster than mido building its message objects). On well-formed files it reads what
`mido.MidiFile` (1.3, clip=False) reads (the tests compare the two on the corpora and on randomly
damaged files). Where mido gives up on a file whose music is intact, it repairs and says so in
`Score.repairs` (see REPAIRS below); it rejects what is truly broken, SMPTE time division, files
without usable notes and files over the `ReadLimits`. Every failure is a `MidiReadError` with a
short reason. What it does to the music (each item is lossy):

- ticks are resampled to TICKS_PER_QUARTER (480), rounding half up: round(tick * 480 / tpb);
- SMF type 0 and 1 tracks play in parallel; type 2 tracks are played one after another (each starts
  where the previous ended); unknown format numbers are read like type 1;
- notes are paired per track and (channel, pitch): a note_on while that key sounds closes the old
  note at the new onset (MahlerNet's rule), and a note_off at that same tick belongs to the closed
  note, as if note-offs sorted first at equal ticks; otherwise a note_off (or a note_on with velocity
  0) closes the sounding note. Unmatched note_offs are ignored. A note never closed ends at the end
  of its track, but no later than HANGING_QUARTERS quarters after the track's last note onset or
  note end (a hanging note is not stretched over a long silence before end_of_track). A second
  note_on for a key at the tick its sounding note started (a unison doubling within one track)
  starts a twin that ends with it, so both stay (the quantiser merges such doublings);
- program of a note, resolved per (track, channel) as a sequencer playing the file would: the last
  program_change of the note's own track on its channel at or before its onset; if its track has
  none there yet, the program in effect on the channel at the onset, i.e. the last program_change
  on that channel in any track at or before the onset (ties at one tick: the later in file order
  wins); 0 if there is none. So in a type-0 file (one track) the program is the channel's, and two
  tracks sharing a channel (a violin and a trombone track on channel 1) each keep their own;
- velocities, controllers, pitch bend, key signatures, lyrics and sysex are discarded;
- drum notes (channel index 9) are dropped (dropped["drum channel"]), then notes whose end equals
  their start after resampling (dropped["zero length"]); `source_notes` counts every note_on with
  velocity > 0, so len(notes) + sum(dropped.values()) == source_notes;
- tempo map: sorted, one change per tick (the last wins), TempoChange(0, 500000) prepended when the
  first change is after tick 0 or there is none; tempo 0 (meaningless) is ignored;
- metre map: sorted, one per tick (the last wins), repeats of the same metre merged; no implicit 4/4.
- the end tick is the last event of any track or the last note end, whichever is later.

REPAIRS: `Score.repairs` is a tuple of these phrases, in the order first met, each once, with
" (xN)" appended when it was made N > 1 times (stable strings: the manifest counts them):

- "unwrapped RIFF RMID": the SMF inside a RIFF RMID file's "data" chunk was read;
- "unwrapped MacBinary": the SMF data fork behind a 128-byte MacBinary header was read;
- "skipped unknown chunk 'TAG'": a chunk that is not MTrk (the SMF spec says to skip these);
- "skipped malformed key signature", "skipped malformed tempo", "skipped malformed SMPTE offset",
  "skipped malformed sequence number", "skipped malformed channel prefix": meta events with too few
  data bytes or values out of range (mido rejects the file); none of them carries notes;
- "read short time signature": a time signature with 2 or 3 data bytes (numerator and denominator
  are there; only the metronome fields are missing); "skipped malformed time signature": fewer;
- "ended hanging notes": notes never closed, ended as described above.

LIMITS (`ReadLimits`) are checked before the work they bound: the file size before reading it, the
note and event counts as they grow, and the length in ticks (at 480 per quarter) as soon as a
delta time pushes past it; a file over a limit raises MidiReadError naming the limit and the value.

`write_midi` writes a type-1 file (conductor track + one track per channel, velocity 64) that reads
back to the same notes, tempos and metres (bytes are written directly; mido is only a test oracle
now). `assign_channels` places programs on channels over time (at most 15 sounding at once).
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mahler_dist.errors import MidiReadError
from mahler_dist.music.score import (
    NOTE_COLUMNS,
    TICKS_PER_QUARTER,
    MetreChange,
    NoteCol,
    Score,
    TempoChange,
    sort_notes,
)

__all__ = ["DRUM_CHANNEL", "DEFAULT_TEMPO", "VELOCITY", "ChannelAssignment", "ReadLimits", "assign_channels",
           "read_midi", "write_midi"]

DRUM_CHANNEL = 9  # channel index (MIDI channel 10)
DEFAULT_TEMPO = 500_000  # us per quarter (120 bpm)
VELOCITY = 64  # the original's fixed output velocity (reference 5.1)
DROP_DRUMS = "drum channel"
DROP_ZERO_LENGTH = "zero length"
HANGING_QUARTERS = 4  # a note never closed lasts at most this long after its track's last note event
# ends[i] <= _TWIN means: note i ends when note (_TWIN - ends[i]) does (a unison doubling, see above)
_TWIN = -2

_MAX_TICK = 2**40  # raw ticks; keeps tick * 960 and the program lookup keys within int64
_MAX_CHUNK = 1_000_000  # mido's MAX_MESSAGE_LENGTH: longer meta/sysex events are rejected as it does
# Total length (status included) of the system messages 0xF1..0xFE that mido accepts in a file.
_SYSTEM_LENGTH = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFE: 1}
_MACBINARY_HEADER = 128


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one file may cost to read; each is checked before the work it bounds.

    max_file_bytes: size of the file (or of the bytes given), checked before reading or parsing;
    max_events: MIDI events (channel, meta, sysex and system messages) of all tracks together;
    max_notes: note_ons with velocity > 0 (what `Score.source_notes` counts), drums included;
    max_ticks: length in ticks at 480 per quarter (after resampling): the last event of any track
      or note end; the default, 38,400,000, is 20,000 bars of 4/4 (about 11 hours at 120 bpm).
    """

    max_file_bytes: int = 64 << 20
    max_events: int = 20_000_000
    max_notes: int = 5_000_000
    max_ticks: int = 20_000 * 4 * TICKS_PER_QUARTER

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_events", "max_notes", "max_ticks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ReadLimits.{name} must be a positive int, got {value!r}")


class _Reject(Exception):
    """Internal: the file is unusable; `args[0]` is the reason."""


# --------------------------------------------------------------------------------------------------
# Reading


def read_midi(source: str | os.PathLike | bytes, name: str | None = None,
              limits: ReadLimits = ReadLimits()) -> Score:
    """Parse a MIDI file (a path, or its raw bytes) into a `Score` at 480 ticks per quarter.

    Lossy as described in the module docstring (drums, zero-length notes, velocities, controllers);
    what was repaired to read the file is in `Score.repairs`. Raises `MidiReadError(name, reason)`
    for any file that cannot be turned into a Score, including files without pitched notes and
    files over `limits`; never another exception type.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name if name is not None else "<bytes>"
        if len(source) > limits.max_file_bytes:
            raise MidiReadError(label, _too_large(len(source), limits))
        data = bytes(source)
    else:
        try:
            label = name if name is not None else os.fspath(source)
            path = Path(source)
            size = path.stat().st_size
            if size > limits.max_file_bytes:  # before reading it: a huge file costs nothing
                raise MidiReadError(label, _too_large(size, limits))
            data = path.read_bytes()
        except TypeError as exc:
            reason = f"not a path or bytes ({type(source).__name__})"
            raise MidiReadError(str(name or source), reason) from exc
        except OSError as exc:
            raise MidiReadError(label, f"cannot read file ({exc.strerror or exc})") from None
        if len(data) > limits.max_file_bytes:  # it grew since stat
            raise MidiReadError(label, _too_large(len(data), limits))
    try:
        return _read(data, limits)
    except _Reject as exc:
        raise MidiReadError(label, exc.args[0]) from None
    except MemoryError:
        raise MidiReadError(label, "out of memory while parsing") from None
    except Exception as exc:  # a bug here must still not escape as another type (pipeline contract)
        raise MidiReadError(label, f"internal error while parsing ({type(exc).__name__}: {exc})") from exc


def _too_large(size: int, limits: ReadLimits) -> str:
    return f"file too large ({size:,} bytes > max_file_bytes {limits.max_file_bytes:,})"


def _too_long(raw_tick: int, tpb: int, limits: ReadLimits) -> str:
    ticks = _resample_int(raw_tick, tpb)
    return f"too long ({ticks:,} ticks at 480 per quarter > max_ticks {limits.max_ticks:,}; huge delta times?)"


def _read(d: bytes, limits: ReadLimits) -> Score:
    out = _Collector()
    d = _unwrap(d, out)
    fmt, ntracks, tpb, pos = _read_header(d)
    # The raw tick past which the resampled length surely exceeds max_ticks (exact check at the end).
    raw_limit = min(_MAX_TICK, (limits.max_ticks + 1) * tpb // TICKS_PER_QUARTER + tpb)
    budget = _Budget(limits, raw_limit)
    track_end = 0  # where the previous track ended: type 2 plays tracks one after another
    last_tick = 0
    k = 0  # index of the next MTrk chunk (unknown chunks are skipped and do not count)
    n = len(d)
    while k < ntracks:
        if pos + 8 > n:
            if pos >= n:
                raise _Reject(f"truncated file (the header declares {ntracks} tracks, found {k})")
            raise _Reject(f"truncated file (incomplete chunk header of track {k})")
        chunk = d[pos : pos + 4]
        start = pos + 8
        end = start + int.from_bytes(d[pos + 4 : start], "big")
        if chunk != b"MTrk":  # the SMF spec: readers skip chunks they do not know
            out.repair(f"skipped unknown chunk '{chunk.decode('latin-1').encode('unicode_escape').decode()}'")
            pos = end
            continue
        pos, tick = _parse_track(d, start, end, k, track_end if fmt == 2 else 0, out, budget, tpb)
        if tick > raw_limit:
            raise _Reject(_too_long(tick, tpb, limits))
        last_tick = max(last_tick, tick)
        track_end = tick
        k += 1
    score = out.to_score(tpb, last_tick)
    if score.end_tick > limits.max_ticks:
        raise _Reject(_too_long(score.end_tick * tpb // TICKS_PER_QUARTER, tpb, limits))
    return score


def _unwrap(d: bytes, out: "_Collector") -> bytes:
    """The SMF inside a RIFF RMID or MacBinary file (recorded as a repair); other data as given."""
    if d[:4] == b"RIFF" and d[8:12] == b"RMID":
        pos = 12
        while pos + 8 <= len(d):  # RIFF sub-chunks: id, little-endian size, data padded to even
            size = int.from_bytes(d[pos + 4 : pos + 8], "little")
            if d[pos : pos + 4] == b"data":
                inner = d[pos + 8 : pos + 8 + size]
                if inner[:4] != b"MThd":
                    raise _Reject(f"not a MIDI file (RIFF RMID wrapper whose data chunk does not start with "
                                  f"MThd; it starts with {inner[:8]!r})")
                out.repair("unwrapped RIFF RMID")
                return inner
            pos += 8 + size + (size & 1)
        raise _Reject("not a MIDI file (RIFF RMID wrapper without a data chunk)")
    if _is_macbinary(d):
        size = int.from_bytes(d[83:87], "big")  # length of the data fork, which follows the header
        inner = d[_MACBINARY_HEADER : _MACBINARY_HEADER + size] if size else d[_MACBINARY_HEADER:]
        if inner[:4] != b"MThd":
            raise _Reject(f"not a MIDI file (MacBinary header; the data fork behind it does not start with "
                          f"MThd; it starts with {inner[:8]!r})")
        out.repair("unwrapped MacBinary")
        return inner
    return d


def _is_macbinary(d: bytes) -> bool:
    # Version byte 0, file name length 1..63, zero filler bytes 74 and 82 (MacBinary I/II/III).
    return len(d) >= _MACBINARY_HEADER and d[0] == 0 and 1 <= d[1] <= 63 and d[74] == 0 and d[82] == 0


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
    if d[:8] == b"SMF2CLIP":
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


class _Budget:
    """What the rest of the file may still cost: notes and events left, the raw tick limit."""

    __slots__ = ("limits", "raw_limit", "events")

    def __init__(self, limits: ReadLimits, raw_limit: int) -> None:
        self.limits = limits
        self.raw_limit = raw_limit
        self.events = 0


class _Collector:
    """Notes, program changes, tempos, metres and repairs of one file, as flat lists (raw ticks)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.keys: list[int] = []  # channel << 7 | pitch
        self.track_counts: list[int] = []
        self.pc_ticks: list[int] = []
        self.pc_keys: list[int] = []  # track << 11 | channel << 7 | program
        self.tempos: list[tuple[int, int]] = []
        self.metres: list[tuple[int, int, int]] = []
        self.repairs: Counter = Counter()  # insertion order = first met

    def repair(self, what: str, times: int = 1) -> None:
        self.repairs[what] += times

    def repair_list(self) -> tuple[str, ...]:
        return tuple(what if n == 1 else f"{what} (x{n})" for what, n in self.repairs.items())

    def to_score(self, tpb: int, last_tick: int) -> Score:
        starts = np.array(self.starts, dtype=np.int64)
        ends = np.array(self.ends, dtype=np.int64)
        keys = np.array(self.keys, dtype=np.int64)
        channels = keys >> 7
        tracks = np.repeat(np.arange(len(self.track_counts), dtype=np.int64), self.track_counts)
        programs = self._programs(starts, channels, tracks)
        source_notes = len(starts)
        if source_notes == 0:
            raise _Reject("file contains no notes")

        dropped: Counter = Counter()
        keep = channels != DRUM_CHANNEL
        if not keep.all():
            dropped[DROP_DRUMS] = int(source_notes - keep.sum())
            if not keep.any():
                raise _Reject("file contains no pitched notes (only drums)")
        twin = ends <= _TWIN
        while twin.any():  # a twin points to a later note; chains (triple doublings) take more steps
            ends[twin] = ends[_TWIN - ends[twin]]
            twin = ends <= _TWIN
        starts, ends = _resample(starts, tpb), _resample(ends, tpb)
        nonzero = ends != starts
        zero = keep & ~nonzero
        if zero.any():
            dropped[DROP_ZERO_LENGTH] = int(zero.sum())
        keep &= nonzero
        if not keep.any():
            raise _Reject("file contains no pitched notes of non-zero length")

        notes = np.empty((int(keep.sum()), len(NOTE_COLUMNS)), dtype=np.int64)
        notes[:, NoteCol.START] = starts[keep]
        notes[:, NoteCol.END] = ends[keep]
        notes[:, NoteCol.PITCH] = keys[keep] & 0x7F
        notes[:, NoteCol.PROGRAM] = programs[keep]
        notes[:, NoteCol.CHANNEL] = channels[keep]
        notes[:, NoteCol.TRACK] = tracks[keep]
        end_tick = max(_resample_int(last_tick, tpb), int(notes[:, NoteCol.END].max()))
        return Score(
            notes=sort_notes(notes),
            tempos=self._tempo_map(tpb),
            metres=self._metre_map(tpb),
            end_tick=end_tick,
            source_notes=source_notes,
            dropped=dropped,
            repairs=self.repair_list(),
        )

    def _programs(self, starts: np.ndarray, channels: np.ndarray, tracks: np.ndarray) -> np.ndarray:
        """The program of each note, per (track, channel), else per channel (module docstring)."""
        if not self.pc_ticks:
            return np.zeros(len(starts), dtype=np.int64)
        pc_ticks = np.array(self.pc_ticks, dtype=np.int64)
        pc_keys = np.array(self.pc_keys, dtype=np.int64)
        pc_programs = pc_keys & 0x7F
        pc_channels = (pc_keys >> 7) & 0x0F
        pc_tracks = pc_keys >> 11
        span = int(max(pc_ticks.max(), starts.max(initial=0))) + 1
        own_found, own = _last_at_or_before(pc_tracks * 16 + pc_channels, pc_ticks, pc_programs,
                                            tracks * 16 + channels, starts, span)
        channel_found, channel = _last_at_or_before(pc_channels, pc_ticks, pc_programs, channels, starts, span)
        return np.where(own_found, own, np.where(channel_found, channel, 0))

    def _tempo_map(self, tpb: int) -> list[TempoChange]:
        by_tick: dict[int, int] = {}
        if self.tempos:
            raw = np.array(self.tempos, dtype=np.int64)
            raw = raw[raw[:, 1] > 0]
            ticks = _resample(raw[:, 0], tpb)
            order = np.argsort(ticks, kind="stable")  # the last in file order wins at a tick
            by_tick = dict(zip(ticks[order].tolist(), raw[order, 1].tolist()))
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


def _last_at_or_before(pc_groups, pc_ticks, pc_values, groups, ticks, span):
    """For each (group, tick): (found, value of the last event of that group at or before tick);
    events at one tick count in file order (the input order), so the later one wins."""
    order = np.lexsort((np.arange(len(pc_ticks)), pc_ticks, pc_groups))
    pc_groups, pc_ticks, pc_values = pc_groups[order], pc_ticks[order], pc_values[order]
    idx = np.searchsorted(pc_groups * span + pc_ticks, groups * span + ticks, side="right") - 1
    at = np.maximum(idx, 0)
    return (idx >= 0) & (pc_groups[at] == groups), pc_values[at]


def _resample(ticks: np.ndarray, tpb: int) -> np.ndarray:
    if tpb == TICKS_PER_QUARTER:
        return ticks
    return (ticks * (2 * TICKS_PER_QUARTER) + tpb) // (2 * tpb)


def _resample_int(tick: int, tpb: int) -> int:
    return (tick * (2 * TICKS_PER_QUARTER) + tpb) // (2 * tpb)


def _parse_track(d: bytes, i: int, end: int, k: int, t: int, out: _Collector, budget: _Budget,
                 tpb: int) -> tuple[int, int]:
    """Parse track chunk `k` (events d[i:end]) starting at tick `t`; return (position, last tick).

    Mirrors mido's read_track: it stops only when the position hits `end` exactly (an event that
    overruns its chunk reads on into what follows, which then ends in an error), running status
    also follows system messages, and a data byte after a sysex running status is skipped.
    The limits: the note count is checked at every note_on, the event count at every event, the
    length whenever a multi-byte delta time moves `t` (one-byte deltas add at most 127 ticks per
    event, so the caller's check at the end of the track bounds them).
    """
    starts, ends, keys, tempos = out.starts, out.ends, out.keys, out.tempos
    start_append, end_append, key_append = starts.append, ends.append, keys.append
    n = len(d)
    first_note = count = len(starts)
    limits = budget.limits
    max_notes, raw_limit = limits.max_notes, budget.raw_limit
    events_left = limits.max_events - budget.events
    sounding: dict[int, int] = {}  # key -> index of its open note
    retriggered: dict[int, int] = {}  # key -> tick at which a note_on closed the previous note
    last_status = -1
    done = 0
    try:
        for done in range(events_left + 1):  # counts the events; cheaper than a counter in the loop
            if i == end:
                break
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
                if t > raw_limit:
                    raise _Reject(_too_long(t, tpb, limits) + f" in track {k}")
            else:
                t += b
            status = d[i]
            i += 1
            if status < 128:  # running status: this byte is the first data byte
                if last_status < 0:
                    raise _Reject(f"running status without a preceding status byte in track {k}")
                status = last_status
                if status < 0xF0:
                    i -= 1
                elif status != 0xF0 and status != 0xF7:  # mido drops that byte before a sysex
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
                    if (pitch | velocity) > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    key = (status & 0x0F) << 7 | pitch
                    if velocity and kind == 0x90:
                        if count >= max_notes:
                            raise _Reject(f"too many notes (more than max_notes {max_notes:,}, in track {k})")
                        old = sounding.get(key)
                        if old is not None:
                            if starts[old] != t:  # retrigger: the old note ends here
                                ends[old] = t
                                retriggered[key] = t
                            else:  # a unison doubling: the old note ends with the new one
                                ends[old] = _TWIN - count
                        sounding[key] = count
                        count += 1
                        start_append(t)
                        end_append(-1)
                        key_append(key)
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
                    out.pc_keys.append(k << 11 | (status & 0x0F) << 7 | program)
                elif kind == 0xD0:
                    if d[i] > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += 1
                else:  # 0xA0 aftertouch, 0xB0 control change, 0xE0 pitch bend
                    if d[i] > 127 or d[i + 1] > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += 2
            elif status == 0xFF:
                mtype = d[i]
                length = d[i + 1]
                i += 2
                if length > 127:
                    length, i = _varint(d, i - 1)
                    if length > _MAX_CHUNK:
                        raise _Reject(f"meta event length {length} exceeds {_MAX_CHUNK} bytes in track {k}")
                if mtype == 0x51 and length >= 3:
                    tempos.append((t, d[i] << 16 | d[i + 1] << 8 | d[i + 2]))
                elif mtype in _CHECKED_META:
                    _read_checked_meta(d, mtype, i, length, t, k, out)
                i += length
                if i > n:
                    raise IndexError
            elif status == 0xF0 or status == 0xF7:
                length, i = _varint(d, i)
                if length > _MAX_CHUNK:
                    raise _Reject(f"sysex length {length} exceeds {_MAX_CHUNK} bytes in track {k}")
                j = i
                i += length
                if i > n:
                    raise IndexError
                if length and max(d[j:i]) > 127:  # mido: only a leading F0 and a final F7 may be > 127
                    body = d[j + (d[j] == 0xF0) : i - (d[i - 1] == 0xF7)]
                    if body and max(body) > 127:
                        raise _Reject(f"invalid sysex data byte > 127 in track {k}")
            else:
                length = _SYSTEM_LENGTH.get(status)
                if length is None:
                    raise _Reject(f"undefined status byte 0x{status:02x} in track {k}")
                if length > 1:
                    if max(d[i : i + length - 1]) > 127:
                        raise _Reject(f"invalid data byte > 127 in track {k}")
                    i += length - 1
                    if i > n:
                        raise IndexError
        else:  # the loop ran out before the track did
            raise _Reject(f"too many events (more than max_events {limits.max_events:,}, in track {k})")
    except IndexError:
        raise _Reject(f"truncated file (unexpected end of data in track {k})") from None
    budget.events += done
    if sounding:  # never terminated: close at the end of the track, not long after its last note
        last_note_event = max(max(starts[first_note:count]), max(ends[first_note:count]))
        close = min(t, last_note_event + HANGING_QUARTERS * tpb)
        for old in sounding.values():
            ends[old] = max(close, starts[old])
        out.repair("ended hanging notes", len(sounding))
    out.track_counts.append(count - first_note)
    return i, t


def _varint(d: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        b = d[i]
        i += 1
        value = (value << 7) | (b & 127)
        if b < 128:
            return value, i


_CHECKED_META = frozenset((0x00, 0x20, 0x51, 0x54, 0x58, 0x59))
# Time-signature denominator exponents that mido rejects ("must be a power of 2": its test is
# math.log(2**e, 2) == int(...), which float rounding fails for these e); all are absurd metres.
_MIDO_BAD_EXPONENTS = frozenset(e for e in range(256) if math.log(2**e, 2) != int(math.log(2**e, 2)))


def _read_checked_meta(d: bytes, mtype: int, j: int, length: int, t: int, k: int, out: _Collector) -> None:
    """Decode a time signature; skip (as a repair) the meta events that mido cannot decode.

    Those are: tempo, time or key signature, SMPTE offset, sequence number or channel prefix with
    too few data bytes; key signatures outside -7..7 / major-minor; SMPTE frame-rate codes above 3.
    None of them carries notes, so a sequencer ignores them and so does this reader. A time
    signature with 2 or 3 data bytes still has its numerator and denominator and is read; one with
    an absurd denominator (2**e that mido cannot decode, e.g. 2**171) leaves the bars unknown and
    rejects the file. The data is d[j : j + length]; the caller checks that it is all there.
    """
    if j + length > len(d):
        raise IndexError
    if mtype == 0x58:
        if length < 2:
            out.repair("skipped malformed time signature")
            return
        if d[j + 1] in _MIDO_BAD_EXPONENTS:
            raise _Reject(f"invalid time signature (denominator 2**{d[j + 1]}) in track {k}")
        if length < 4:
            out.repair("read short time signature")
        out.metres.append((t, d[j], 2 ** d[j + 1]))
    elif mtype == 0x51:  # only reached when too short
        out.repair("skipped malformed tempo")
    elif mtype == 0x59:
        if length < 2:
            out.repair("skipped malformed key signature")
            return
        key = d[j] - 256 if d[j] > 127 else d[j]
        if not (-7 <= key <= 7 and d[j + 1] in (0, 1)):
            out.repair("skipped malformed key signature")
    elif mtype == 0x54:  # frame rate code, minutes, seconds and sub-frames out of range
        if length < 5 or d[j] >> 5 > 3 or d[j + 1] > 59 or d[j + 2] > 59 or d[j + 4] > 99:
            out.repair("skipped malformed SMPTE offset")
    elif mtype == 0x00 and length == 1:
        out.repair("skipped malformed sequence number")
    elif mtype == 0x20 and length == 0:
        out.repair("skipped malformed channel prefix")


# --------------------------------------------------------------------------------------------------
# Writing


def write_midi(score: Score, ticks_per_beat: int = TICKS_PER_QUARTER) -> bytes:
    """Write `score` as a type-1 MIDI file and return its bytes.

    Track 0 (conductor) holds the tempo map, the time signatures and the end of the piece; then one
    track per channel used, in channel order, with a program_change at tick 0 and another wherever
    a note's program differs from the previous note's on that channel. Notes are written on their
    CHANNEL column as given (see `assign_channels`) with velocity 64, note_offs before note_ons at a
    tick. Lossy: the TRACK column is not kept; a note overlapping a later note of the same (channel,
    pitch) is cut at that note's onset, and unison twins (same channel, pitch and start) end at the
    earlier of their ends, as `read_midi` would read them anyway; notes of one channel that start at
    one tick must share a program. Ticks are rescaled when ticks_per_beat != 480.
    Raises ValueError for values MIDI cannot hold (pitch, program, channel, tempo, metre).
    """
    if not 1 <= ticks_per_beat <= 0x7FFF:
        raise ValueError(f"ticks_per_beat must be in 1..32767, got {ticks_per_beat}")
    notes = np.asarray(score.notes, dtype=np.int64).reshape(-1, len(NOTE_COLUMNS))
    _check_writable(score, notes)

    def scale(ticks):
        if ticks_per_beat == TICKS_PER_QUARTER:
            return ticks
        return (ticks * (2 * ticks_per_beat) + TICKS_PER_QUARTER) // (2 * TICKS_PER_QUARTER)

    conductor: list[tuple[int, int, bytes]] = []
    for change in score.metres:
        exponent = int(change.denominator).bit_length() - 1
        conductor.append((scale(int(change.tick)), 0,
                          bytes((0xFF, 0x58, 4, int(change.numerator), exponent, 24, 8))))
    for change in score.tempos:
        conductor.append((scale(int(change.tick)), 1,
                          b"\xFF\x51\x03" + int(change.us_per_quarter).to_bytes(3, "big")))
    last_end = int(notes[:, NoteCol.END].max()) if len(notes) else 0
    tracks = [_track_chunk(conductor, scale(max(int(score.end_tick), last_end)))]

    for channel in np.unique(notes[:, NoteCol.CHANNEL]).tolist():
        ch = notes[notes[:, NoteCol.CHANNEL] == channel]
        ch = ch[np.lexsort((ch[:, NoteCol.PITCH], ch[:, NoteCol.START]))]
        events: list[tuple[int, int, bytes]] = []
        program = -1
        for start, prog in ch[:, [NoteCol.START, NoteCol.PROGRAM]].tolist():
            if prog != program:
                events.append((scale(start) if program >= 0 else 0, 1, bytes((0xC0 | channel, prog))))
                program = prog
        note_on, note_off = 0x90 | channel, 0x80 | channel
        starts, ends = scale(ch[:, NoteCol.START]).tolist(), scale(_cut_overlaps(ch)).tolist()
        for start, end, pitch in zip(starts, ends, ch[:, NoteCol.PITCH].tolist()):
            events.append((start, 2, bytes((note_on, pitch, VELOCITY))))
            events.append((end, 0, bytes((note_off, pitch, 0))))
        tracks.append(_track_chunk(events, 0))
    header = b"MThd" + (6).to_bytes(4, "big") + struct.pack(">hhh", 1, len(tracks), ticks_per_beat)
    return header + b"".join(tracks)


def _check_writable(score: Score, notes: np.ndarray) -> None:
    if len(notes):
        starts, ends = notes[:, NoteCol.START], notes[:, NoteCol.END]
        if starts.min() < 0 or ends.min() < 0 or (ends < starts).any():
            raise ValueError("notes must have 0 <= start <= end")
        for column, name, top in ((NoteCol.PITCH, "pitch", 127), (NoteCol.PROGRAM, "program", 127),
                                  (NoteCol.CHANNEL, "channel", 15)):
            if notes[:, column].min() < 0 or notes[:, column].max() > top:
                raise ValueError(f"note {name} must be in 0..{top} (channels: see assign_channels)")
    for change in score.tempos:
        if not 0 < change.us_per_quarter <= 0xFFFFFF or change.tick < 0:
            raise ValueError(f"tempo {change} cannot be written (us per quarter must be 1..16777215)")
    for change in score.metres:
        den = int(change.denominator)
        power_of_two = den >= 1 and not den & (den - 1) and den.bit_length() - 1 not in _MIDO_BAD_EXPONENTS
        if not (0 <= change.numerator <= 255 and power_of_two and den <= 2**255 and change.tick >= 0):
            raise ValueError(f"metre {change} at tick {change.tick} cannot be written as a time signature")


def _track_chunk(events: list[tuple[int, int, bytes]], end_tick: int) -> bytes:
    """An MTrk chunk from (tick, rank, event bytes): sorted by tick, then rank (offs 0, program
    changes 1, ons 2; stable within a rank), ending with end_of_track at end_tick or the last event."""
    events.sort(key=lambda e: (e[0], e[1]))
    out = bytearray()
    now = 0
    for tick, _, event in events:
        out += _varint_bytes(tick - now)
        out += event
        now = tick
    out += _varint_bytes(max(end_tick, now) - now)
    out += b"\xFF\x2F\x00"
    return b"MTrk" + len(out).to_bytes(4, "big") + bytes(out)


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def _cut_overlaps(ch: np.ndarray) -> np.ndarray:
    """Ends of one channel's notes, each cut at the next later onset of its pitch.

    Notes of one pitch that start together (unison twins) are not cut: the reader closes them
    together at the first of their note_offs.
    """
    ends = ch[:, NoteCol.END].copy()
    span = int(ch[:, NoteCol.START].max()) + 1
    keys = ch[:, NoteCol.PITCH] * span + ch[:, NoteCol.START]
    ordered = np.sort(keys)
    after = np.searchsorted(ordered, keys, side="right")  # first note of a later (pitch, start)
    nxt = ordered[np.minimum(after, len(keys) - 1)]
    nxt_start = nxt % span
    cut = (after < len(keys)) & (nxt // span == ch[:, NoteCol.PITCH]) & (nxt_start < ends)
    ends[cut] = nxt_start[cut]
    return ends


# --------------------------------------------------------------------------------------------------
# Channels


class ChannelAssignment(NamedTuple):
    """What `assign_channels` makes of a set of notes."""

    notes: np.ndarray  # the notes it placed (input order), CHANNEL set; ready for write_midi
    unplaced: int  # notes left out: no channel was free at their onset (over 15 programs at once)


OUTPUT_CHANNELS = tuple(c for c in range(16) if c != DRUM_CHANNEL)


def assign_channels(notes: np.ndarray) -> ChannelAssignment:
    """Place the notes' programs on channels over time, as the original's channel simulation does
    (reference 2.6 and 5.1): at most 15 programs sound at once, channel 9 (drums) is never used.

    Notes are taken by onset (then end). A program keeps the channel it holds until another
    program takes it over; a program without a channel takes a never-used channel, else the one
    that has been silent the longest (all its notes ended at or before this onset; ties: the lowest
    channel). When no channel is silent, the note cannot be placed: it is left out and counted in
    `unplaced`, never put on a channel where another program sounds. `write_midi` writes a
    program_change wherever a channel passes to another program, so every note keeps its program.
    The input is not modified.
    """
    notes = np.array(notes, dtype=np.int64).reshape(-1, len(NOTE_COLUMNS))
    if len(notes) == 0:
        return ChannelAssignment(notes, 0)
    order = np.lexsort((notes[:, NoteCol.END], notes[:, NoteCol.START]))
    never_used = list(OUTPUT_CHANNELS)
    silent_from = dict.fromkeys(OUTPUT_CHANNELS, 0)  # channel -> end of the last note placed on it
    holder: dict[int, int] = {}  # channel -> the program it plays now
    channel_of: dict[int, int] = {}  # program -> the channel it holds
    placed = np.full(len(notes), -1, dtype=np.int64)
    unplaced = 0
    ordered = notes[order]
    for i, start, end, program in zip(order.tolist(), ordered[:, NoteCol.START].tolist(),
                                      ordered[:, NoteCol.END].tolist(), ordered[:, NoteCol.PROGRAM].tolist()):
        channel = channel_of.get(program)
        if channel is None:
            if never_used:
                channel = never_used.pop(0)
            else:
                silent = [c for c in OUTPUT_CHANNELS if silent_from[c] <= start]
                if not silent:
                    unplaced += 1
                    continue
                channel = min(silent, key=lambda c: silent_from[c])  # min keeps the lowest of ties
                del channel_of[holder[channel]]
            holder[channel] = program
            channel_of[program] = channel
        placed[i] = channel
        # a zero-length note still holds its channel for one tick: its note_on follows the tick's
        # program change in write_midi's order (offs, program changes, ons)
        silent_from[channel] = max(silent_from[channel], end, start + 1)
    keep = placed >= 0
    notes = notes[keep]
    notes[:, NoteCol.CHANNEL] = placed[keep]
    return ChannelAssignment(notes, unplaced)
