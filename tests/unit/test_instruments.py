"""GM program -> 23 instrument classes and back (reference 1.5 and DESIGN.md's departures)."""

import pytest

from mahler_dist.music.instruments import (
    DEFAULT_WRITE_BACK,
    NUM_INSTRUMENTS,
    PROGRAM_TO_CLASS,
    UNMAPPED,
    instrument_class,
    write_back_programs,
)


def test_every_program_has_one_class_or_is_unmapped():
    assert len(PROGRAM_TO_CLASS) == 128
    assert set(PROGRAM_TO_CLASS) == set(range(NUM_INSTRUMENTS)) | {UNMAPPED}


@pytest.mark.parametrize(
    "program, cls",
    [(0, 0), (8, 0), (15, 0), (108, 0), (16, 1), (23, 1), (24, 2), (45, 2), (104, 2), (107, 2),
     (32, 3), (40, 4), (110, 4), (41, 5), (42, 6), (43, 7), (48, 8), (51, 8), (55, 8), (47, 9),
     (52, 10), (54, 10), (56, 11), (59, 11), (57, 12), (58, 13), (60, 14), (61, 15), (63, 15),
     (64, 16), (67, 16), (68, 17), (69, 17), (109, 17), (111, 17), (70, 18), (71, 19), (72, 20),
     (79, 20), (80, 21), (87, 21), (88, 22), (103, 22)],
)
def test_reference_mapping(program, cls):
    assert instrument_class(program) == cls


def test_departures_harp_and_tremolo_strings_are_kept():
    assert instrument_class(46) == 2   # harp joins the plucked strings
    assert instrument_class(44) == 8   # tremolo strings join the string ensemble


def test_percussive_and_effects_are_unmapped():
    assert all(instrument_class(p) == UNMAPPED for p in range(112, 128))


def test_write_back_defaults_and_overrides():
    assert DEFAULT_WRITE_BACK[:5] == (0, 16, 27, 33, 40)
    assert DEFAULT_WRITE_BACK[17] == 69 and DEFAULT_WRITE_BACK[20] == 73
    # every default program maps back to its own class
    assert all(instrument_class(p) == c for c, p in enumerate(DEFAULT_WRITE_BACK))
    programs = write_back_programs({2: 46, "8": 44})
    assert programs[2] == 46 and programs[8] == 44 and programs[0] == 0
    with pytest.raises(ValueError, match="class 0..22"):
        write_back_programs({23: 0})
