"""Expansion of compact rows (`mahler_dist.music.vocab`) into the model's one-hot features.

Runs on the model's device, so only the compact int rows cross the host/device boundary.
Every field that is -1 ("none": padding, START, pause-row pitch/instrument, off-grid beat)
expands to an all-zero slice, as in the original's 367-wide rows (reference 1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mahler_dist.config import ModelConfig
from mahler_dist.music import vocab

V = vocab


def one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """long [...] -> [..., classes]; an index < 0 gives an all-zero vector."""
    valid = (index >= 0).unsqueeze(-1).to(dtype)
    out = torch.zeros(*index.shape, classes, dtype=dtype, device=index.device)
    return out.scatter_(-1, index.clamp(min=0).unsqueeze(-1), valid)


def unpack_active(packed: torch.Tensor, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [..., 15] -> (pitches [..., 96], instruments [..., 23]); little bit order as
    `vocab.pack_active` (np.packbits(bitorder="little"))."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1                   # [..., 15, 8]
    bits = bits.flatten(-2)[..., : V.ACTIVE_BITS].to(dtype)       # [..., 119]
    return bits[..., : V.NUM_PITCHES], bits[..., V.NUM_PITCHES:]


@dataclass(frozen=True)
class FeatureSpec:
    """Which features are on (reference 6.4 `beats` / `active_*` .include) and their widths."""

    beats: bool
    active_pitches: bool
    active_instruments: bool

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> FeatureSpec:
        return cls(cfg.use_beats, cfg.use_active_pitches, cfg.use_active_instruments)

    @property
    def beat_width(self) -> int:
        return V.NUM_BEATS if self.beats else 0

    @property
    def event_width(self) -> int:
        """offset, beat, duration, pitch, instrument one-hots: 247 with beats."""
        return 2 * V.NUM_TIME_CLASSES + self.beat_width + V.NUM_PITCHES + V.NUM_INSTRUMENTS

    @property
    def context_width(self) -> int:
        """The START flag, then the event one-hots: 248 (reference 3.1)."""
        return 1 + self.event_width

    @property
    def decoder_width(self) -> int:
        """Event one-hots plus the active sets of the previous row: 366 (reference 3.1)."""
        return (self.event_width + (V.NUM_PITCHES if self.active_pitches else 0)
                + (V.NUM_INSTRUMENTS if self.active_instruments else 0))

    def events(self, rows: torch.Tensor) -> torch.Tensor:
        """long [..., 5] -> [..., event_width], in the original's order o, b, d, p, i."""
        parts = [one_hot(rows[..., V.OFFSET], V.NUM_TIME_CLASSES)]
        if self.beats:
            parts.append(one_hot(rows[..., V.BEAT], V.NUM_BEATS))
        parts += [one_hot(rows[..., V.DURATION], V.NUM_TIME_CLASSES),
                  one_hot(rows[..., V.PITCH], V.NUM_PITCHES),
                  one_hot(rows[..., V.INSTRUMENT], V.NUM_INSTRUMENTS)]
        return torch.cat(parts, dim=-1)

    def context(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """long [B, T, 5] -> [B, T, context_width]. START = duration -1 in a real row; padding
        rows are all -1 too, so the length tells them apart."""
        steps = torch.arange(rows.shape[1], device=rows.device)
        real = steps.unsqueeze(0) < lengths.unsqueeze(1)                          # [B, T]
        start = (real & (rows[..., V.DURATION] == V.NONE)).unsqueeze(-1).float()  # [B, T, 1]
        return torch.cat([start, self.events(rows)], dim=-1)

    def decoder_step(self, rows: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """A row and its packed active sets -> the decoder input it makes for the NEXT step.
        long [..., 5], uint8 [..., 15] -> [..., decoder_width]. An all -1 row with empty sets
        gives the all-zero input of step 0."""
        parts = [self.events(rows)]
        if self.active_pitches or self.active_instruments:
            pitches, instruments = unpack_active(active)
            parts += [pitches] if self.active_pitches else []
            parts += [instruments] if self.active_instruments else []
        return torch.cat(parts, dim=-1)

    def decoder_inputs(self, rows: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the input at step t is row t-1's features, zeros at t = 0.
        long [B, T, 5], uint8 [B, T, 15] -> [B, T, decoder_width]."""
        x = self.decoder_step(rows, active)
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
