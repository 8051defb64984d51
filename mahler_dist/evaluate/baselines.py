"""Baselines a model must beat, fitted on the training split only, scored on the evaluated bars.

- unigram: the most frequent class of each property (its NLL: the class frequencies, smoothed);
- bigram: each property given the previous event's value of it - offset and duration given the
  previous row, pitch and instrument given the previous *note* (rows of the bar, else the context
  bar's last ones; none at a piece's start), add-alpha smoothed;
- copy the previous bar: the context bar's rows as the prediction of the bar (free-running
  measures: step-aligned accuracy, note and onset F1), nothing for a piece's first bar.

Teacher-forced scores follow the model's masks (model/loss.py): offset and duration over every
row, pitch and instrument over note rows. Plain numpy, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mahler_dist.generate.metrics import ReconStats
from mahler_dist.music import vocab as V
from mahler_dist.generate.output import parse_metre

PROPERTIES = {"offset": (V.OFFSET, V.NUM_TIME_CLASSES), "duration": (V.DURATION, V.NUM_TIME_CLASSES),
              "pitch": (V.PITCH, V.NUM_PITCHES), "instrument": (V.INSTRUMENT, V.NUM_INSTRUMENTS)}
NOTE_PROPERTIES = ("pitch", "instrument")
ALPHA = 0.1   # add-alpha smoothing: an unseen class is rare, never impossible


def _is_start(context: np.ndarray) -> bool:
    return len(context) == 1 and bool((np.asarray(context) == V.NONE).all())


def _events(context: np.ndarray, rows: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, previous states) of one property over the rows it is scored on; state 0 = none,
    c + 1 = class c."""
    col, _ = PROPERTIES[name]
    seq = np.concatenate([np.zeros((0, V.ROW_WIDTH), rows.dtype) if _is_start(context) else context, rows])
    values = seq[:, col].astype(np.int64)
    if name in NOTE_PROPERTIES:
        scored = seq[:, V.PITCH] >= 0
    else:
        scored = np.ones(len(seq), bool)
    # the previous value: the last scored row before each row (forward fill of indices)
    idx = np.where(scored, np.arange(len(seq)), -1)
    last = np.maximum.accumulate(idx) if len(idx) else idx
    prev_idx = np.concatenate([[-1], last[:-1]]) if len(last) else last
    prev = np.where(prev_idx >= 0, values[np.maximum(prev_idx, 0)] + 1, 0)
    own = np.arange(len(seq)) >= len(seq) - len(rows)       # the bar's rows, not the context's
    keep = own & scored
    return values[keep], prev[keep]


@dataclass
class CountBaselines:
    """Unigram and bigram counts per property (mergeable: add two fitted on different shards)."""

    unigram: dict[str, np.ndarray] = field(default_factory=lambda: {
        k: np.zeros(c, np.float64) for k, (_, c) in PROPERTIES.items()})
    bigram: dict[str, np.ndarray] = field(default_factory=lambda: {
        k: np.zeros((c + 1, c), np.float64) for k, (_, c) in PROPERTIES.items()})
    bars: int = 0

    def fit_bar(self, context: np.ndarray, rows: np.ndarray) -> None:
        for name in PROPERTIES:
            target, prev = _events(np.asarray(context), np.asarray(rows), name)
            np.add.at(self.unigram[name], target, 1)
            np.add.at(self.bigram[name], (prev, target), 1)
        self.bars += 1

    def merge(self, other: CountBaselines) -> CountBaselines:
        for name in PROPERTIES:
            self.unigram[name] += other.unigram[name]
            self.bigram[name] += other.bigram[name]
        self.bars += other.bars
        return self

    def log_probs(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        uni = {k: np.log((u + ALPHA) / (u.sum() + ALPHA * len(u))) for k, u in self.unigram.items()}
        bi = {k: np.log((b + ALPHA) / (b.sum(1, keepdims=True) + ALPHA * b.shape[1])) for k, b in self.bigram.items()}
        return uni, bi


@dataclass
class BaselineScores:
    """Teacher-forced NLL and accuracy of the count baselines, and copy-the-previous-bar's
    free-running reconstruction, summed over the evaluated bars (mergeable)."""

    nll: dict[str, dict[str, float]] = field(default_factory=lambda: {
        m: dict.fromkeys(PROPERTIES, 0.0) for m in ("unigram", "bigram")})
    correct: dict[str, dict[str, int]] = field(default_factory=lambda: {
        m: dict.fromkeys(PROPERTIES, 0) for m in ("unigram", "bigram")})
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))
    copy_previous: ReconStats = field(default_factory=ReconStats)

    def merge(self, other: BaselineScores) -> BaselineScores:
        for m in ("unigram", "bigram"):
            for k in PROPERTIES:
                self.nll[m][k] += other.nll[m][k]
                self.correct[m][k] += other.correct[m][k]
        for k in PROPERTIES:
            self.count[k] += other.count[k]
        self.copy_previous.merge(other.copy_previous)
        return self

    def summary(self) -> dict:
        out = {}
        for m in ("unigram", "bigram"):
            out[m] = {"nll_per_event": {k: self.nll[m][k] / self.count[k] if self.count[k] else math.nan
                                        for k in PROPERTIES},
                      "accuracy": {k: self.correct[m][k] / self.count[k] if self.count[k] else math.nan
                                   for k in PROPERTIES}}
        out["copy_previous_bar"] = self.copy_previous.summary(teacher_forcing=False)
        return out


class BaselineScorer:
    """Scores bars with baselines fitted on the training split."""

    def __init__(self, fitted: CountBaselines):
        self.uni, self.bi = fitted.log_probs()
        self.uni_best = {k: int(np.argmax(v)) for k, v in self.uni.items()}
        self.bi_best = {k: np.argmax(v, axis=1) for k, v in self.bi.items()}

    def score_bar(self, scores: BaselineScores, context: np.ndarray, rows: np.ndarray, metre: str) -> None:
        context, rows = np.asarray(context), np.asarray(rows)
        for name in PROPERTIES:
            target, prev = _events(context, rows, name)
            scores.count[name] += len(target)
            scores.nll["unigram"][name] -= float(self.uni[name][target].sum())
            scores.correct["unigram"][name] += int((target == self.uni_best[name]).sum())
            scores.nll["bigram"][name] -= float(self.bi[name][prev, target].sum())
            scores.correct["bigram"][name] += int((self.bi_best[name][prev] == target).sum())
        previous = np.zeros((0, V.ROW_WIDTH), rows.dtype) if _is_start(context) else context
        scores.copy_previous.add(previous, rows, parse_metre(metre).bar_ticks)
