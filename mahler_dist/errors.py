"""The project's error types: each carries the input it concerns and a reason a person can act on."""

from __future__ import annotations


class MahlerError(Exception):
    """Base class for errors that are reported to the user without a traceback."""


class MidiReadError(MahlerError):
    """A MIDI file could not be turned into a Score (or a Piece).

    `source` names the input (a path or a label); `reason` says what is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ConfigError(MahlerError):
    """A configuration file or value is invalid; the message names the key, the file and the fix."""
