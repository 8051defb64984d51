"""The hard bounds of one generation request, checked before the work they bound.

A request's decode work is counted in bars decoded (each at most `max_events_per_bar` rows), so
one figure bounds every mode: pred/continue decode samples x bars, recon the units times the
samples, intpol steps + 1. Uploads are bounded in bytes before they are decoded from base64 and
in MIDI events, notes and length while the project's reader parses them (music.midi_io.ReadLimits).
"""

from __future__ import annotations

from dataclasses import dataclass

from mahler_dist.music.midi_io import ReadLimits
from mahler_dist.music.score import TICKS_PER_QUARTER


@dataclass(frozen=True)
class ServeLimits:
    max_bars: int = 64                 # new bars per sample (pred, continue)
    max_samples: int = 8               # samples per request
    max_steps: int = 32                # intpol steps
    max_units: int = 32                # recon units
    max_work_bars: int = 256           # bars decoded per request, all samples together
    max_upload_bytes: int = 1 << 20    # one MIDI upload, before base64 (1 MiB)
    max_upload_quarters: int = 2048    # an upload's length: 512 bars of 4/4 (checked while parsing)
    max_upload_notes: int = 50_000
    max_upload_events: int = 400_000
    max_temperature: float = 3.0       # 0 is argmax

    @property
    def max_upload_b64(self) -> int:
        """Length of the base64 text of the largest upload (4 characters per 3 bytes)."""
        return 4 * ((self.max_upload_bytes + 2) // 3)

    def read_limits(self) -> ReadLimits:
        return ReadLimits(max_file_bytes=self.max_upload_bytes, max_events=self.max_upload_events,
                          max_notes=self.max_upload_notes,
                          max_ticks=self.max_upload_quarters * TICKS_PER_QUARTER)


LIMITS = ServeLimits()
