"""The hierarchical output heads: offset -> duration -> pitch -> instrument (reference 3.5).

Each head sees the decoder output h_t and the one-hots of the earlier properties of the same
event: ground truth under teacher forcing, the sampled values in generation. Every method takes
long index tensors (-1 = none) of any leading shape [...] matching h [..., H], and returns
float32 logits [..., C], before temperature. Masked classes get MASK_VALUE, a finite large
negative, so a softmax gives them zero probability without producing NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from mahler_dist.config import ModelConfig
from mahler_dist.model.features import FeatureSpec, one_hot
from mahler_dist.model.layers import normal_linear, tf_batch_norm
from mahler_dist.music import vocab as V

MASK_VALUE = -1e9
PROPERTIES = ("offset", "duration", "pitch", "instrument")
CLASSES = {"offset": V.NUM_TIME_CLASSES, "duration": V.NUM_TIME_CLASSES,
           "pitch": V.NUM_PITCHES, "instrument": V.NUM_INSTRUMENTS}


class Heads(nn.Module):
    def __init__(self, hidden: int, spec: FeatureSpec, cfg: ModelConfig):
        super().__init__()
        self.spec = spec
        self.next_step_reduction = cfg.duration_next_step_reduction
        self.same_step_reduction = cfg.pitch_same_step_reduction
        t, b, p = V.NUM_TIME_CLASSES, spec.beat_width, V.NUM_PITCHES
        inputs = {"offset": hidden, "duration": hidden + t + b,
                  "pitch": hidden + t + b + t, "instrument": hidden + t + b + t + p}
        self.linear = nn.ModuleDict({k: normal_linear(inputs[k], CLASSES[k], cfg.init_std)
                                     for k in PROPERTIES})
        # interval logits -95..+95 (index i = interval + 95), added to the absolute pitch logits
        self.interval = normal_linear(inputs["pitch"], 2 * p - 1, cfg.init_std) if cfg.relative_pitch else None
        # compat (reference 9 item 5): BN on the logits makes them depend on batch statistics.
        self.norm = (nn.ModuleDict({k: tf_batch_norm(CLASSES[k]) for k in PROPERTIES})
                     if cfg.logits_batch_norm else None)

    def _logits(self, name: str, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear[name](x).float()                     # [..., C]
        if self.norm is not None:
            shape = logits.shape
            logits = self.norm[name](logits.reshape(-1, shape[-1])).reshape(shape)
        return logits

    def _time(self, offset: torch.Tensor, beat: torch.Tensor) -> list[torch.Tensor]:
        parts = [one_hot(offset, V.NUM_TIME_CLASSES)]
        if self.spec.beats:
            parts.append(one_hot(beat, V.NUM_BEATS))
        return parts

    def offset_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self._logits("offset", h)

    def duration_logits(self, h: torch.Tensor, offset: torch.Tensor, beat: torch.Tensor
                        ) -> torch.Tensor:
        logits = self._logits("duration", torch.cat([h, *self._time(offset, beat)], dim=-1))
        if self.next_step_reduction:
            # A row at offset 0 shares the previous onset: a pause (duration 0) there would not
            # advance time, so it is impossible.
            pause = torch.arange(V.NUM_TIME_CLASSES, device=h.device) == 0          # [60]
            logits = logits.masked_fill((offset == 0).unsqueeze(-1) & pause, MASK_VALUE)
        return logits

    def pitch_logits(self, h: torch.Tensor, offset: torch.Tensor, beat: torch.Tensor,
                     duration: torch.Tensor, prev_pitch: torch.Tensor,
                     interval_from: torch.Tensor | None = None) -> torch.Tensor:
        """prev_pitch: the previous row's pitch (-1 if none), for the same-step reduction and
        the interval term; `interval_from` replaces it for the interval term alone (-1 where
        the decoder-input dropout hid the previous row)."""
        interval_from = prev_pitch if interval_from is None else interval_from
        x = torch.cat([h, *self._time(offset, beat), one_hot(duration, V.NUM_TIME_CLASSES)], -1)
        logits = self._logits("pitch", x)
        if self.interval is not None:
            # pitch k's interval from the previous pitch is k - prev: gather its logit; a row with
            # no previous pitch (the bar's first row, after a pause) gets none
            classes = torch.arange(V.NUM_PITCHES, device=h.device)
            has_prev = interval_from >= 0
            index = classes + (V.NUM_PITCHES - 1) - interval_from.clamp(min=0).unsqueeze(-1)   # [..., 96]
            relative = torch.gather(self.interval(x).float(), -1, index)
            logits = logits + relative * has_prev.unsqueeze(-1)
        if self.same_step_reduction:
            # Notes of one onset are stored by ascending pitch (reference 1.1).
            classes = torch.arange(V.NUM_PITCHES, device=h.device)
            below = classes < prev_pitch.clamp(min=0).unsqueeze(-1)           # [..., 96]
            logits = logits.masked_fill(below & (offset == 0).unsqueeze(-1), MASK_VALUE)
        return logits

    def instrument_logits(self, h: torch.Tensor, offset: torch.Tensor, beat: torch.Tensor,
                          duration: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        x = torch.cat([h, *self._time(offset, beat), one_hot(duration, V.NUM_TIME_CLASSES),
                       one_hot(pitch, V.NUM_PITCHES)], dim=-1)
        return self._logits("instrument", x)

    def teacher_forced(self, h: torch.Tensor, rows: torch.Tensor,
                       hidden_prev: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All four heads conditioned on the ground-truth rows. h [B, T, H], rows [B, T, 5];
        hidden_prev bool [B, T]: steps whose previous row the decoder-input dropout hid."""
        o, b, d, p = (rows[..., k] for k in (V.OFFSET, V.BEAT, V.DURATION, V.PITCH))
        prev_p = torch.cat([torch.full_like(p[:, :1], V.NONE), p[:, :-1]], dim=1)
        interval_from = None if hidden_prev is None else prev_p.masked_fill(hidden_prev, V.NONE)
        return {"offset": self.offset_logits(h),
                "duration": self.duration_logits(h, o, b),
                "pitch": self.pitch_logits(h, o, b, d, prev_p, interval_from),
                "instrument": self.instrument_logits(h, o, b, d, p)}
