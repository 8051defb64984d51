"""read_midi resolves a note's program per (track, channel), as a sequencer playing the file does.

Orchestral files often put two tracks on one channel (a violin track and a trombone track on
channel 1, each with its own program change at tick 0); the channel-wide rule took the later
program change in file order and turned every violin note into a trombone note.
"""

from __future__ import annotations


import mido

from midi_bytes import smf_of_messages

from mahler_dist.music.midi_io import read_midi
from mahler_dist.music.score import NoteCol

VIOLIN, TROMBONE, FLUTE = 40, 57, 73


smf = smf_of_messages


def prog(tick, program, channel=0):
    return tick, mido.Message("program_change", program=program, channel=channel)


def note(tick, pitch, length=480, channel=0):
    return [(tick, mido.Message("note_on", note=pitch, velocity=80, channel=channel)),
            (tick + length, mido.Message("note_off", note=pitch, channel=channel))]


def programs(data) -> list[tuple[int, int, int, int]]:
    score = read_midi(data)
    columns = [NoteCol.TRACK, NoteCol.START, NoteCol.PITCH, NoteCol.PROGRAM]
    return sorted(tuple(int(v) for v in row) for row in score.notes[:, columns])


def test_two_tracks_on_one_channel_keep_their_own_programs():
    violin = [prog(0, VIOLIN)] + note(0, 76) + note(480, 79)
    trombone = [prog(0, TROMBONE)] + note(0, 48) + note(480, 50)
    assert programs(smf(violin, trombone)) == [(0, 0, 76, VIOLIN), (0, 480, 79, VIOLIN),
                                               (1, 0, 48, TROMBONE), (1, 480, 50, TROMBONE)]


def test_a_track_without_a_program_change_plays_what_is_in_effect_on_its_channel():
    # the conductor track changes channel 0's program at 960; the part has none of its own
    conductor = [prog(0, VIOLIN), prog(960, FLUTE)]
    part = note(0, 76) + note(960, 79)
    assert programs(smf(conductor, part)) == [(1, 0, 76, VIOLIN), (1, 960, 79, FLUTE)]


def test_a_track_that_sets_its_program_late_plays_the_channels_until_then():
    other = [prog(0, TROMBONE)] + note(0, 48, length=1920)
    late = note(0, 76) + [prog(960, VIOLIN)] + note(960, 79)
    assert programs(smf(other, late)) == [(0, 0, 48, TROMBONE), (1, 0, 76, TROMBONE), (1, 960, 79, VIOLIN)]


def test_a_tracks_own_program_is_kept_when_another_track_changes_the_channel_later():
    violin = [prog(0, VIOLIN)] + note(0, 76) + note(1920, 79)
    trombone = [prog(960, TROMBONE)] + note(960, 48)
    assert programs(smf(violin, trombone)) == [(0, 0, 76, VIOLIN), (0, 1920, 79, VIOLIN), (1, 960, 48, TROMBONE)]


def test_type_0_uses_the_channels_program_over_time():
    events = [prog(0, VIOLIN), prog(0, FLUTE, channel=1), prog(960, TROMBONE)]
    events += note(0, 76) + note(0, 70, channel=1) + note(960, 48)
    assert programs(smf(events, fmt=0)) == [(0, 0, 70, FLUTE), (0, 0, 76, VIOLIN), (0, 960, 48, TROMBONE)]
