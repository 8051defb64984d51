"""`mahler inspect`: a report for a good file, the reason (no traceback, exit 2) for a bad one."""

import sys
from pathlib import Path

from mahler_dist.cli import main
from mahler_dist.music.encode import encode_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "midi" / "scn15_7.mid"


def test_report_and_round_trip(tmp_path, capsys):
    out = tmp_path / "back.mid"
    assert main(["inspect", str(EXAMPLE), "--write-midi", str(out)]) == 0
    report = capsys.readouterr().out
    for field in ("repairs     none", "metres      4/4", "bars        33", "notes       456 of 456", "timing",
                  "instruments piano"):
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


def test_report_names_the_repairs_made_to_the_file(midi_dir, capsys):
    wrapped = midi_dir / "corrupt" / "midly" / "Beethoven.rmi"  # a SMF inside a RIFF RMID wrapper
    assert main(["inspect", str(wrapped)]) == 0
    assert "repairs     unwrapped RIFF RMID" in capsys.readouterr().out
    key = midi_dir / "corrupt" / "midi-classical-music" / "beethoven-anhang_14_3.mid"  # key signature mode 255
    assert main(["inspect", str(key)]) == 0
    assert "repairs     skipped malformed key signature" in capsys.readouterr().out


def test_no_module_of_the_package_shadows_the_standard_library():
    package = Path(__file__).resolve().parents[2] / "mahler_dist"
    modules = {p.stem for p in package.glob("*.py")} | {p.name for p in package.iterdir() if p.is_dir()}
    assert not modules & set(sys.stdlib_module_names)


def test_inspect_counts_what_the_quantiser_moved_and_takes_a_config(tmp_path, capsys):
    assert main(["inspect", str(EXAMPLE)]) == 0
    moved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("moved")]
    assert moved and "end held to the next onset (legato)" in moved[0]
    config = tmp_path / "q.yaml"
    config.write_text("data:\n  quantize:\n    legato_repair: false\n")
    assert main(["inspect", str(EXAMPLE), "--config", str(config)]) == 0
    assert "legato" not in capsys.readouterr().out
