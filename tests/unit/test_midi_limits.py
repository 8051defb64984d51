"""read_midi's ReadLimits are checked before the work they bound, on crafted hostile files.

Each file is rejected (or read) within a time and a peak of traced memory that do not grow with
what the file claims (hours of silence, millions of notes or events), and a rejection names the
limit and the value. Bounds are generous for a loaded 2-core CI machine; the unbounded reader took
hours and gigabytes on the first file.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from midi_bytes import smf, vlq

from mahler_dist.errors import MidiReadError
from mahler_dist.music.midi_io import HANGING_QUARTERS, ReadLimits, read_midi
from mahler_dist.music.score import NoteCol

EOT = bytes([0x00, 0xFF, 0x2F, 0x00])


def _read(data, **kwargs):
    try:
        return read_midi(data, **kwargs)
    except MidiReadError as e:
        return e


def measured(data, **kwargs):
    """(Score or MidiReadError, seconds, peak traced bytes) of read_midi: timed untraced (tracing
    slows every allocation several times), then read again under tracemalloc for the peak."""
    t0 = time.perf_counter()
    result = _read(data, **kwargs)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    _read(data, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def rejected(data, *, seconds=2.0, peak=64 << 20, **kwargs) -> str:
    result, took, used = measured(data, **kwargs)
    assert isinstance(result, MidiReadError), f"accepted: {result.source_notes} notes, end {result.end_tick}"
    assert took < seconds, f"took {took:.2f} s ({result.reason})"
    assert used < peak, f"peak {used / 2**20:.0f} MiB ({result.reason})"
    return result.reason


def test_a_33_byte_file_with_an_unterminated_note_and_a_huge_delta():
    # tpb 1 and a 4-byte delta: 2**28 quarters, 1.3e11 ticks at 480 per quarter
    data = smf(bytes([0x00, 0x90, 60, 64]) + vlq(2**28 - 1) + bytes([0xFF, 0x2F, 0x00]), tpb=1)
    assert len(data) == 33
    reason = rejected(data)
    assert reason.startswith("too long (128,849,018,400 ticks at 480 per quarter > max_ticks 38,400,000")


def test_many_deltas_each_under_the_limit_are_stopped_when_the_sum_passes_it():
    body = bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0])
    body += b"".join(vlq(2**28 - 1) + b"\xFF\x01\x00" for _ in range(100_000))  # empty text events
    reason = rejected(smf(body + EOT), limits=ReadLimits(max_ticks=2**40))
    assert "max_ticks 1,099,511,627,776" in reason
    # one-byte deltas (at most 127 ticks an event) are caught at the end of the track
    body = bytes([0x00, 0x90, 60, 64]) + b"\x7F\xFF\x01\x00" * 1000 + EOT
    assert "max_ticks 100,000" in rejected(smf(body), limits=ReadLimits(max_ticks=100_000))


def test_the_limit_is_on_ticks_after_resampling():
    body = bytes([0x00, 0x90, 60, 64]) + vlq(1000) + bytes([0x80, 60, 0]) + EOT  # 1000 ticks
    assert read_midi(smf(body, tpb=480), limits=ReadLimits(max_ticks=1000)).end_tick == 1000
    assert "(2,000 ticks" in rejected(smf(body, tpb=240), limits=ReadLimits(max_ticks=1999))  # 2000 at 480


def test_a_hanging_note_is_not_stretched_over_a_long_silence():
    quarter = 480
    body = bytes([0x00, 0x90, 60, 64, 0x00, 0x90, 64, 64]) + vlq(quarter) + bytes([0x80, 64, 0])
    body += vlq(1_000_000) + b"\xFF\x2F\x00"  # a long silence, then end_of_track
    score = read_midi(smf(body))
    assert score.notes[:, [NoteCol.START, NoteCol.END]].tolist() == [
        [0, quarter + HANGING_QUARTERS * quarter], [0, quarter]]
    assert score.end_tick == 1_000_000 + quarter
    assert score.repairs == ("ended hanging notes",)


def _notes_in_one_bar(n: int) -> bytes:
    """`n` one-tick chord notes in running status, all within one bar at 30,000 ticks per quarter."""
    group = bytes((0, 36, 64)) + b"".join(bytes((0, 36 + i, 64)) for i in range(1, 60))
    group += bytes((1, 36, 0)) + b"".join(bytes((0, 36 + i, 0)) for i in range(1, 60))
    return smf(b"\x00\x90\x24\x40\x01\x24\x00" + group * (n // 60) + EOT, tpb=30_000)


def test_a_million_notes_in_one_bar():
    data = _notes_in_one_bar(1_000_020)
    reason = rejected(data, limits=ReadLimits(max_notes=100_000), seconds=1.0)
    assert reason.startswith("too many notes (more than max_notes 100,000")
    # within the default limit it is read, in bounded time (untraced: tracing a million notes is slow)
    t0 = time.perf_counter()
    score = read_midi(data)
    assert score.source_notes == 1_000_021 and time.perf_counter() - t0 < 15


def test_a_50_mb_file():
    text = b"\x00\xFF\x01\x7F" + b"x" * 127  # a text meta event of 131 bytes
    data = smf(bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0]) + text * (50_000_000 // len(text) + 1) + EOT)
    assert len(data) > 50_000_000
    reason = rejected(data, limits=ReadLimits(max_file_bytes=16 << 20), seconds=0.1, peak=1 << 20)
    assert reason == f"file too large ({len(data):,} bytes > max_file_bytes 16,777,216)"
    score, took, peak = measured(data)  # under the default 64 MiB: parsed, without copying the bytes
    assert score.source_notes == 1 and took < 10 and peak < 16 << 20


def test_a_huge_file_on_disk_is_not_read(tmp_path):
    path = tmp_path / "huge.mid"
    with path.open("wb") as f:
        f.write(smf(bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0]) + EOT))
        f.truncate(200 << 20)  # sparse: 200 MiB that cost no disk
    reason = rejected(path, seconds=0.1, peak=1 << 20)
    assert reason == f"file too large ({200 << 20:,} bytes > max_file_bytes {64 << 20:,})"


def test_long_running_status():
    # 3 million pitch-bend events carried by one status byte (3 bytes each)
    body = b"\x00\x90\x3C\x40\x00\xE0\x00\x40" + b"\x00\x00\x40" * 3_000_000 + EOT
    reason = rejected(smf(body), limits=ReadLimits(max_events=200_000))
    assert reason == "too many events (more than max_events 200,000, in track 0)"


def test_the_event_limit_counts_all_tracks():
    track = b"\x00\x90\x3C\x40" + b"\x01\xB0\x07\x40" * 999 + EOT  # 1001 events
    assert read_midi(smf(track, track), limits=ReadLimits(max_events=2002)).source_notes == 2
    assert "in track 1" in rejected(smf(track, track), limits=ReadLimits(max_events=2001))


def test_many_unknown_chunks_and_nested_wrappers():
    one = bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0]) + EOT
    data = smf(one)
    data = data[:14] + b"JUNK\x00\x00\x00\x00" * 50_000 + data[14:]
    score, took, peak = measured(data)
    assert score.repairs == ("skipped unknown chunk 'JUNK' (x50000)",) and took < 2 and peak < 32 << 20
    inner = smf(one)
    for _ in range(3):  # a RIFF inside a RIFF inside a RIFF: one level is unwrapped, no more
        body = b"RMID" + b"data" + len(inner).to_bytes(4, "little") + inner
        inner = b"RIFF" + len(body).to_bytes(4, "little") + body
    assert "data chunk does not start with MThd" in rejected(inner)


@pytest.mark.parametrize("field", ["max_file_bytes", "max_events", "max_notes", "max_ticks"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        ReadLimits(**{field: 0})
