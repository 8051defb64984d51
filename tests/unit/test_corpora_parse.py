"""read_midi over every file of the shared corpora: a Score or a MidiReadError, never anything else.

One test per corpus folder (not per file); a failing run lists every offending file. The folder is
../shared/data/midi beside the checkout, or $MAHLER_SHARED_DATA (see tests/conftest.py); the tests
skip with a message when it is missing. Run with -s to see the per-corpus counts and reasons.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mahler_dist.errors import MidiReadError
from mahler_dist.music.midi_io import read_midi
from mahler_dist.music.score import TICKS_PER_QUARTER, NoteCol, sort_notes

MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".rmi"}
NOT_MIDI = {"SOURCE.md", "manifest.csv", "README.md"}
# Reasons that concern what a well-formed file contains, not how it is encoded.
CONTENT_REASONS = ("file contains no notes", "file contains no pitched notes")


def corpus_files(folder: Path, any_suffix: bool = False) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_MIDI
             and (any_suffix or p.suffix.lower() in MIDI_SUFFIXES)]
    return sorted(files)


def score_problems(score) -> list[str]:
    """Invariants every Score from read_midi keeps."""
    notes = score.notes
    problems = []
    if len(notes) == 0:
        problems.append("no notes but no error")
    if len(notes) + sum(score.dropped.values()) != score.source_notes:
        problems.append(f"{len(notes)} kept + {dict(score.dropped)} dropped "
                        f"!= {score.source_notes} source notes")
    if len(notes):
        if not np.array_equal(notes, sort_notes(notes.copy())):
            problems.append("notes not sorted")
        if (notes[:, NoteCol.END] <= notes[:, NoteCol.START]).any() or (notes[:, NoteCol.START] < 0).any():
            problems.append("a note with end <= start or start < 0")
        if not ((0 <= notes[:, NoteCol.PITCH]) & (notes[:, NoteCol.PITCH] <= 127)).all():
            problems.append("pitch outside 0..127")
        if not ((0 <= notes[:, NoteCol.PROGRAM]) & (notes[:, NoteCol.PROGRAM] <= 127)).all():
            problems.append("program outside 0..127")
        channels = notes[:, NoteCol.CHANNEL]
        if (channels == 9).any() or not ((0 <= channels) & (channels <= 15)).all():
            problems.append("drum channel or channel outside 0..15")
        if score.end_tick < notes[:, NoteCol.END].max():
            problems.append("end_tick before the last note end")
    ticks = [t.tick for t in score.tempos]
    if (not ticks or ticks[0] != 0 or ticks != sorted(set(ticks))
            or min(t.us_per_quarter for t in score.tempos) < 1):
        problems.append(f"bad tempo map {score.tempos[:3]}")
    metre_ticks = [m.tick for m in score.metres]
    if metre_ticks != sorted(set(metre_ticks)):
        problems.append("metre map not sorted or has two changes at one tick")
    if any(str(a) == str(b) for a, b in zip(score.metres, score.metres[1:])):
        problems.append("repeated metre not merged")
    return problems


def read_corpus(folder: Path, files: list[Path]):
    """(accepted scores, rejection reasons, problems: files that broke the contract)."""
    accepted, rejected, problems = {}, {}, []
    for path in files:
        rel = path.relative_to(folder)
        try:
            score = read_midi(path)
        except MidiReadError as e:
            if not e.reason or e.source != str(path):
                problems.append(f"{rel}: MidiReadError without a reason or with source {e.source!r}")
            rejected[rel] = e.reason
            continue
        except Exception as e:  # the contract: never another exception type
            problems.append(f"{rel}: {type(e).__name__}: {e}")
            continue
        accepted[rel] = score
        problems += [f"{rel}: {p}" for p in score_problems(score)]
    return accepted, rejected, problems


def report(corpus: str, files, accepted, rejected) -> None:
    kept = sum(len(s.notes) for s in accepted.values())
    source = sum(s.source_notes for s in accepted.values())
    dropped = sum((s.dropped for s in accepted.values()), Counter())
    print(f"\n{corpus}: {len(files)} files, {len(accepted)} accepted, {len(rejected)} rejected; "
          f"notes kept {kept} of {source}, dropped {dict(dropped)}")
    for reason, count in Counter(r.split(" (")[0] for r in rejected.values()).most_common():
        print(f"  rejected {count:4d}: {reason}")


@pytest.mark.parametrize("corpus", ["piano_midi_de", "orchestral_symphonic", "classical_multitrack"])
def test_music_corpora_parse(midi_dir, corpus):
    """Every file of these corpora parses with mido and has pitched notes: all must be accepted."""
    folder = midi_dir / corpus
    files = corpus_files(folder)
    assert files, f"no MIDI files under {folder}"
    accepted, rejected, problems = read_corpus(folder, files)
    report(corpus, files, accepted, rejected)
    problems += [f"{rel}: rejected: {reason}" for rel, reason in rejected.items()]
    assert not problems, f"{len(problems)} files in {corpus}:\n" + "\n".join(problems)
    # every file was resampled onto the 480 grid (spot check: tempo and metre ticks are ints)
    assert all(isinstance(t.tick, int) for s in accepted.values() for t in s.tempos)
    assert TICKS_PER_QUARTER == 480


def test_edge_cases_parse_or_are_rejected_for_their_content(midi_dir):
    """All edge-case files parse with mido; a rejection may only say that there is nothing to keep."""
    folder = midi_dir / "edge_cases"
    files = corpus_files(folder)
    assert files, f"no MIDI files under {folder}"
    accepted, rejected, problems = read_corpus(folder, files)
    report("edge_cases", files, accepted, rejected)
    problems += [f"{rel}: rejected: {reason}" for rel, reason in rejected.items()
                 if not reason.startswith(CONTENT_REASONS)]
    assert not problems, f"{len(problems)} files in edge_cases:\n" + "\n".join(problems)
    type2 = accepted[Path("jazz-soft_test-midi-files/test-2-tracks-type-2.mid")]
    assert type2.notes[:, NoteCol.START].max() > 0 and len(set(type2.notes[:, 5].tolist())) == 2
    assert Path("midi-classical-music_oddities/unknown_artist-i_o-my_wind_3.mid") in accepted  # format 27905


# What read_midi repairs in a file mido rejects (midi_io's REPAIRS); "ended hanging notes" is not
# one of them: it is made to well-formed files too.
STRUCTURAL_REPAIRS = ("unwrapped RIFF RMID", "unwrapped MacBinary", "skipped unknown chunk",
                      "skipped malformed", "read short time signature")


def test_corrupt_files_are_repaired_or_rejected_with_a_reason(midi_dir):
    """Every file here makes mido fail. Those whose music is intact (a wrapper, an alien chunk, a
    malformed key or time signature) are read, each naming its repair; the rest are rejected."""
    folder = midi_dir / "corrupt"
    files = corpus_files(folder, any_suffix=True)
    assert files, f"no files under {folder}"
    accepted, rejected, problems = read_corpus(folder, files)
    report("corrupt", files, accepted, rejected)
    for rel, score in accepted.items():
        if not any(r.startswith(STRUCTURAL_REPAIRS) for r in score.repairs):
            problems.append(f"{rel}: accepted ({len(score.notes)} notes) without a repair: {score.repairs}")
    assert not problems, f"{len(problems)} files in corrupt:\n" + "\n".join(problems)
    by_name = {rel.name: score for rel, score in accepted.items()}
    reasons = {rel.name: reason for rel, reason in rejected.items()}
    print(f"corrupt: {len(accepted)} of {len(files)} files now yield music: "
          f"{dict(Counter(r.split(' (x')[0] for s in accepted.values() for r in s.repairs))}")
    assert "unwrapped RIFF RMID" in by_name["Beethoven.rmi"].repairs
    assert "unwrapped MacBinary" in by_name["unknown_artist-a_h-gershwin_1.mid"].repairs
    assert "skipped unknown chunk 'Junk'" in by_name["test-non-midi-track.mid"].repairs
    assert "skipped malformed key signature" in by_name["beethoven-anhang_14_3.mid"].repairs
    assert len(accepted) >= 39  # 28 wrapped, 9 bad key signatures, an alien chunk, a short time signature
    # truly broken files stay rejected
    assert reasons["test-empty-file.mid"] == "empty file (0 bytes)"
    assert reasons["PiDamaged.mid"].startswith("truncated file")
    assert all(reason.startswith("not a MIDI file (MIDI 2.0 Clip") for name, reason in reasons.items()
               if name.endswith(".midi2"))
    macbinary_without_smf = [r for r in reasons.values() if r.startswith("not a MIDI file (MacBinary")]
    assert len(macbinary_without_smf) == 5  # SOURCE.md: 16 of the 21 have an MThd at byte 128
