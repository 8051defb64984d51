"""read_midi reads what is readable: wrappers, alien chunks and malformed meta events are repaired
(each named in Score.repairs), what is truly broken is still rejected.

The wrapped corpus files are checked against the SMF sliced out of them by hand (RIFF: the bytes of
the "data" chunk; MacBinary: the data fork after the 128-byte header, its length at bytes 83..86).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mahler_dist.errors import MidiReadError
from mahler_dist.music.midi_io import read_midi
from mahler_dist.music.score import NoteCol


def chunk(tag: bytes, body: bytes) -> bytes:
    return tag + len(body).to_bytes(4, "big") + body


EOT = bytes([0x00, 0xFF, 0x2F, 0x00])
ONE_NOTE = bytes([0x00, 0x90, 60, 64, 0x83, 0x60, 0x80, 60, 0]) + EOT  # C4 for 480 ticks


def smf(*bodies: bytes, between: bytes = b"") -> bytes:
    """A type-1 file; `between` (other chunks) goes after the header."""
    return chunk(b"MThd", struct.pack(">hhh", 1, len(bodies), 480)) + between + b"".join(
        chunk(b"MTrk", body) for body in bodies)


def riff_rmid(inner: bytes, before: bytes = b"") -> bytes:
    data = b"data" + len(inner).to_bytes(4, "little") + inner + b"\x00" * (len(inner) & 1)
    body = b"RMID" + before + data
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def macbinary(inner: bytes, name: bytes = b"Tango") -> bytes:
    header = bytearray(128)
    header[1] = len(name)
    header[2 : 2 + len(name)] = name
    header[65:73] = b"MidiMOUP"
    header[83:87] = len(inner).to_bytes(4, "big")
    resource_fork = b"\x01" * 200  # after the data fork, padded to 128 bytes: not part of the SMF
    return bytes(header) + inner + bytes(-len(inner) % 128) + resource_fork


def notes(score):
    return score.notes[:, [NoteCol.START, NoteCol.END, NoteCol.PITCH]].tolist()


def test_unknown_chunks_are_skipped_and_named():
    data = smf(ONE_NOTE, ONE_NOTE, between=chunk(b"XFIH", b"\x01\x02\x03") + chunk(b"XFIH", b""))
    score = read_midi(data)
    assert notes(score) == [[0, 480, 60], [0, 480, 60]]
    assert score.repairs == ("skipped unknown chunk 'XFIH' (x2)",)
    # between two tracks, with an unprintable tag
    data = smf(ONE_NOTE)[:-len(ONE_NOTE) - 8] + chunk(b"\x00ab\xff", b"zz") + chunk(b"MTrk", ONE_NOTE)
    assert read_midi(data).repairs == ("skipped unknown chunk '\\x00ab\\xff'",)


def test_a_chunk_that_overruns_the_file_is_still_an_error():
    data = smf(ONE_NOTE)[:14] + b"XFIH" + (10**6).to_bytes(4, "big") + chunk(b"MTrk", ONE_NOTE)
    with pytest.raises(MidiReadError, match="truncated file"):
        read_midi(data)


def test_riff_rmid_is_unwrapped():
    inner = smf(ONE_NOTE)
    score = read_midi(riff_rmid(inner, before=b"LIST" + (3).to_bytes(4, "little") + b"abc\x00"))
    assert notes(score) == notes(read_midi(inner)) and score.repairs == ("unwrapped RIFF RMID",)


def test_macbinary_is_unwrapped():
    inner = smf(ONE_NOTE)
    score = read_midi(macbinary(inner))
    assert notes(score) == notes(read_midi(inner)) and score.repairs == ("unwrapped MacBinary",)


@pytest.mark.parametrize("data, expected", [
    (riff_rmid(b"not midi at all"), "RIFF RMID wrapper whose data chunk does not start with MThd"),
    (b"RIFF\x04\x00\x00\x00RMID", "RIFF RMID wrapper without a data chunk"),
    (macbinary(b"\x00" * 50 + b"MThd"), "MacBinary header; the data fork behind it does not start with MThd"),
    (riff_rmid(smf(ONE_NOTE)[:-3]), "truncated file (unexpected end of data in track 0)"),
], ids=["rmid-not-midi", "rmid-no-data", "macbinary-not-midi", "rmid-truncated-smf"])
def test_broken_wrappers_are_rejected(data, expected):
    with pytest.raises(MidiReadError) as info:
        read_midi(data)
    assert expected in info.value.reason


@pytest.mark.parametrize("event, repair", [
    (bytes([0x00, 0xFF, 0x59, 0x02, 10, 0]), "skipped malformed key signature"),      # 10 sharps
    (bytes([0x00, 0xFF, 0x59, 0x02, 0xFE, 255]), "skipped malformed key signature"),  # mode 255
    (bytes([0x00, 0xFF, 0x59, 0x00]), "skipped malformed key signature"),             # no data bytes
    (bytes([0x00, 0xFF, 0x51, 0x02, 7, 0]), "skipped malformed tempo"),
    (bytes([0x00, 0xFF, 0x54, 0x05, 0x80, 0, 0, 0, 0]), "skipped malformed SMPTE offset"),
    (bytes([0x00, 0xFF, 0x00, 0x01, 5]), "skipped malformed sequence number"),
    (bytes([0x00, 0xFF, 0x20, 0x00]), "skipped malformed channel prefix"),
    (bytes([0x00, 0xFF, 0x58, 0x01, 4]), "skipped malformed time signature"),
])
def test_malformed_meta_events_are_skipped_and_the_notes_kept(event, repair):
    score = read_midi(smf(event + event + ONE_NOTE))
    assert notes(score) == [[0, 480, 60]]
    assert score.repairs == (f"{repair} (x2)",)
    assert score.metres == []


def test_a_short_time_signature_keeps_its_metre():
    score = read_midi(smf(bytes([0x00, 0xFF, 0x58, 0x02, 3, 2]) + ONE_NOTE))
    assert [(m.numerator, m.denominator) for m in score.metres] == [(3, 4)]
    assert score.repairs == ("read short time signature",)


def test_an_absurd_time_signature_still_rejects_the_file():
    with pytest.raises(MidiReadError, match=r"invalid time signature \(denominator 2\*\*171\)"):
        read_midi(smf(bytes([0x00, 0xFF, 0x58, 0x04, 4, 171, 24, 8]) + ONE_NOTE))


def test_a_well_formed_file_has_no_repairs():
    assert read_midi(smf(ONE_NOTE)).repairs == ()


def _wrapped_corpus_files(midi_dir, magic):
    folder = midi_dir / "corrupt"
    found = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.read_bytes()[:len(magic)] == magic]
    assert found, f"no file starting with {magic!r} under {folder}"
    return found


def test_rmid_corpus_files_read_as_the_smf_sliced_out_by_hand(midi_dir):
    files = _wrapped_corpus_files(midi_dir, b"RIFF")
    for path in files:
        data = path.read_bytes()
        at = data.index(b"data")  # by hand: the bytes of the data chunk
        inner = data[at + 8 : at + 8 + int.from_bytes(data[at + 4 : at + 8], "little")]
        wrapped = read_midi(path)
        assert "unwrapped RIFF RMID" in wrapped.repairs
        alone = read_midi(inner)
        np.testing.assert_array_equal(wrapped.notes, alone.notes, err_msg=str(path))
        assert wrapped.tempos == alone.tempos and wrapped.metres == alone.metres
    assert len(files) == 12


def test_macbinary_corpus_files_read_as_the_smf_sliced_out_by_hand(midi_dir):
    files = [p for p in _wrapped_corpus_files(midi_dir, b"\x00") if p.read_bytes()[128:132] == b"MThd"]
    for path in files:
        data = path.read_bytes()
        inner = data[128 : 128 + int.from_bytes(data[83:87], "big")]
        wrapped = read_midi(path)
        assert wrapped.repairs[0] == "unwrapped MacBinary"
        alone = read_midi(inner)
        np.testing.assert_array_equal(wrapped.notes, alone.notes, err_msg=str(path))
        assert wrapped.tempos == alone.tempos and wrapped.metres == alone.metres
    assert len(files) == 16
