"""`mahler inspect`: a report for a good file, the reason (no traceback, exit 2) for a bad one."""

from pathlib import Path

from mahler_dist.cli import main
from mahler_dist.music.encode import encode_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "midi" / "scn15_7.mid"


def test_report_and_round_trip(tmp_path, capsys):
    out = tmp_path / "back.mid"
    assert main(["inspect", str(EXAMPLE), "--write-midi", str(out)]) == 0
    report = capsys.readouterr().out
    for field in ("metres      4/4", "bars        33", "notes       456 of 456", "timing", "instruments piano"):
        assert field in report
    # what was written is what the model sees: encoding it again gives the same rows
    again, first = encode_file(out), encode_file(EXAMPLE)
    assert (again.rows.rows == first.rows.rows).all()


def test_rejected_file_names_the_reason(midi_dir, capsys):
    bad = midi_dir / "corrupt" / "jazz-soft_test-midi-files" / "test-not-a-midi-file.mid"
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a MIDI file" in err and "Traceback" not in err


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    text = capsys.readouterr().out
    for command in ("inspect", "preprocess", "train", "generate", "plot", "describe"):
        assert command in text
