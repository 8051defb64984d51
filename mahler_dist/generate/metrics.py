"""Reconstruction measures: step-aligned accuracy (as the original), note-set F1 and perplexity.

Step-aligned (reference 5.2, 9.28): predicted row i against target row i; offset and duration
over every target row, pitch and instrument over the target's note rows (as the loss masks); a
target row with no predicted row counts as wrong. One inserted or missing event misaligns the
rest of the bar, so the alignment-free note-set F1 is reported beside it: per bar, the notes as
sets of (onset in the bar, pitch, instrument), F1 = 2|P & T| / (|P| + |T|) (1 when both are empty);
and the onset F1 over the sets of onset ticks alone (rhythm, whatever the pitches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mahler_dist.music import vocab as V
from mahler_dist.music.rows import decode_bar

PROPERTIES = ("offset", "duration", "pitch", "instrument")
_COLUMN = {"offset": V.OFFSET, "duration": V.DURATION, "pitch": V.PITCH, "instrument": V.INSTRUMENT}


def _f1(tp: int, n_pred: int, n_target: int) -> float:
    """Micro F1 from counts (1.0 when both sides are empty)."""
    if n_pred == 0 and n_target == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_target)


def note_set(rows: np.ndarray, bar_ticks: int) -> set[tuple[int, int, int]]:
    return {(pos, pitch, instr) for pos, _, pitch, instr in decode_bar(rows, bar_ticks)}


@dataclass
class ReconStats:
    """Running totals over bars; `summary()` gives the report."""

    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))
    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))
    logp: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0.0))
    bars: int = 0
    exact_bars: int = 0
    f1_sum: float = 0.0
    tp: int = 0
    n_pred: int = 0
    n_target: int = 0
    onset_tp: int = 0          # onsets (ticks in the bar) both in the prediction and the target
    onset_pred: int = 0
    onset_target: int = 0
    capped: int = 0

    def merge(self, other: ReconStats) -> ReconStats:
        """Add another's totals (partial results of parallel tasks)."""
        for name in PROPERTIES:
            self.correct[name] += other.correct[name]
            self.total[name] += other.total[name]
            self.logp[name] += other.logp[name]
        for k in ("bars", "exact_bars", "f1_sum", "tp", "n_pred", "n_target", "onset_tp", "onset_pred",
                  "onset_target", "capped"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def add(self, predicted: np.ndarray, target: np.ndarray, bar_ticks: int) -> None:
        predicted, target = np.asarray(predicted), np.asarray(target)
        n = min(len(predicted), len(target))
        note_rows = target[:, V.DURATION] > 0
        for name in PROPERTIES:
            col = _COLUMN[name]
            hits = np.zeros(len(target), dtype=bool)
            hits[:n] = predicted[:n, col] == target[:n, col]
            counted = note_rows if name in ("pitch", "instrument") else np.ones(len(target), bool)
            self.correct[name] += int((hits & counted).sum())
            self.total[name] += int(counted.sum())
        self.bars += 1
        self.exact_bars += int(predicted.shape == target.shape and
                               np.array_equal(predicted[:, [V.OFFSET, V.DURATION, V.PITCH, V.INSTRUMENT]],
                                              target[:, [V.OFFSET, V.DURATION, V.PITCH, V.INSTRUMENT]]))
        p, t = note_set(predicted, bar_ticks), note_set(target, bar_ticks)
        common = len(p & t)
        self.tp += common
        self.n_pred += len(p)
        self.n_target += len(t)
        self.f1_sum += 1.0 if not p and not t else 2.0 * common / (len(p) + len(t))
        po, to = {n[0] for n in p}, {n[0] for n in t}
        self.onset_tp += len(po & to)
        self.onset_pred += len(po)
        self.onset_target += len(to)

    def add_logp(self, name: str, value: float) -> None:
        self.logp[name] += float(value)

    def accuracy(self) -> dict[str, float]:
        return {k: self.correct[k] / self.total[k] if self.total[k] else float("nan") for k in PROPERTIES}

    def perplexity(self) -> dict[str, float]:
        """exp(-mean log p(target)) per property, and "overall" = exp(-mean of the four means)."""
        means = {k: self.logp[k] / self.total[k] for k in PROPERTIES if self.total[k]}
        out = {k: math.exp(-m) for k, m in means.items()}
        if means:
            out["overall"] = math.exp(-sum(means.values()) / len(means))
        return out

    def summary(self, teacher_forcing: bool) -> dict:
        micro_p = self.tp / self.n_pred if self.n_pred else 0.0
        micro_r = self.tp / self.n_target if self.n_target else 0.0
        report = {
            "bars": self.bars,
            "teacher_forcing": teacher_forcing,
            "accuracy_step_aligned": self.accuracy(),
            "rows_counted": dict(self.total),
            "exact_bars": self.exact_bars,
            "note_f1_mean_per_bar": self.f1_sum / self.bars if self.bars else float("nan"),
            "note_precision": micro_p,
            "note_recall": micro_r,
            "note_f1_micro": (2 * micro_p * micro_r / (micro_p + micro_r)) if micro_p + micro_r else 0.0,
            "onset_f1_micro": _f1(self.onset_tp, self.onset_pred, self.onset_target),
            "bars_hit_row_cap": self.capped,
        }
        if teacher_forcing:
            report["perplexity"] = self.perplexity()
        return report

    def line(self) -> str:
        acc = self.accuracy()
        return ("  ".join(f"{k[0]} {acc[k]:.3f}" for k in PROPERTIES)
                + f"  note-F1 {self.f1_sum / max(self.bars, 1):.3f}  bars {self.bars}")
