"""General MIDI program -> MahlerNet's 23 instrument classes, and back (reference section 1.5).

Departures from the original (DESIGN.md section 5): Tremolo Strings (44) and Orchestral Harp (46)
are kept instead of dropped - tremolo strings join the string ensemble class, the harp joins the
plucked-strings class with pizzicato. Programs 112-127 (percussive instruments and sound effects)
are still not modelled: their notes are dropped and counted under UNMAPPED.
The program written back for a class defaults to the original's table; `write_back_programs`
lets a caller (the preprocessor's corpus statistics) override it per class.
"""

from __future__ import annotations

from collections.abc import Mapping

NUM_INSTRUMENTS = 23
#: Class "ignored": notes of these programs are dropped.
UNMAPPED = -1

# (class, name, program written back, GM programs mapped in (0-based)); reference 1.5.
_CLASSES: tuple[tuple[int, str, int, tuple[int, ...]], ...] = (
    (0, "piano & chromatic percussion", 0, (*range(0, 16), 108)),
    (1, "organ", 16, tuple(range(16, 24))),
    (2, "plucked strings", 27, (*range(24, 32), 45, 46, *range(104, 108))),
    (3, "bass", 33, tuple(range(32, 40))),
    (4, "violin", 40, (40, 110)),
    (5, "viola", 41, (41,)),
    (6, "cello", 42, (42,)),
    (7, "contrabass", 43, (43,)),
    (8, "string ensemble", 48, (44, *range(48, 52), 55)),
    (9, "timpani", 47, (47,)),
    (10, "choir", 52, (52, 53, 54)),
    (11, "trumpet", 56, (56, 59)),
    (12, "trombone", 57, (57,)),
    (13, "tuba", 58, (58,)),
    (14, "french horn", 60, (60,)),
    (15, "brass section", 61, (61, 62, 63)),
    (16, "saxophone", 66, tuple(range(64, 68))),
    (17, "oboe & english horn", 69, (68, 69, 109, 111)),
    (18, "bassoon", 70, (70,)),
    (19, "clarinet", 71, (71,)),
    (20, "flute", 73, tuple(range(72, 80))),
    (21, "synth lead", 80, tuple(range(80, 88))),
    (22, "synth pad & fx", 88, tuple(range(88, 104))),
)

INSTRUMENT_NAMES: tuple[str, ...] = tuple(name for _, name, _, _ in _CLASSES)
DEFAULT_WRITE_BACK: tuple[int, ...] = tuple(prog for _, _, prog, _ in _CLASSES)


def _program_table() -> tuple[int, ...]:
    table = [UNMAPPED] * 128
    for cls, _, _, programs in _CLASSES:
        for program in programs:
            assert table[program] == UNMAPPED, f"program {program} mapped twice"
            table[program] = cls
    return tuple(table)


#: PROGRAM_TO_CLASS[program] -> class 0..22, or UNMAPPED.
PROGRAM_TO_CLASS: tuple[int, ...] = _program_table()


def instrument_class(program: int) -> int:
    """The class of a GM program (0..127); UNMAPPED for 112-127."""
    return PROGRAM_TO_CLASS[program]


def write_back_programs(overrides: Mapping[int, int] | None = None) -> tuple[int, ...]:
    """The program to write for each class: the defaults, with `overrides` {class: program} applied."""
    programs = list(DEFAULT_WRITE_BACK)
    for cls, program in (overrides or {}).items():
        cls, program = int(cls), int(program)
        if not 0 <= cls < NUM_INSTRUMENTS or not 0 <= program < 128:
            raise ValueError(f"bad write-back entry {cls}: {program} (class 0..22, program 0..127)")
        programs[cls] = program
    return tuple(programs)
