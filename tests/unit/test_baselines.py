"""The count baselines of `mahler evaluate` (issue 11) on bars whose statistics are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mahler_dist.evaluate.baselines import BaselineScorer, BaselineScores, CountBaselines
from mahler_dist.music import vocab as V

START = V.START_ROW[None, :].copy()


def _bar(pitches: list[int], offset: int = 12, duration: int = 12) -> np.ndarray:
    rows = np.full((len(pitches), V.ROW_WIDTH), V.NONE, dtype=V.ROW_DTYPE)
    rows[:, V.OFFSET], rows[:, V.DURATION], rows[:, V.INSTRUMENT] = offset, duration, 0
    rows[:, V.PITCH] = pitches
    rows[0, V.OFFSET] = 0
    return rows


def test_the_bigram_learns_a_rising_line_that_the_unigram_cannot():
    fitted = CountBaselines()
    for start in range(0, 40, 2):                        # each bar: p, p+2, p+4, p+6
        fitted.fit_bar(START, _bar([start + 2 * k for k in range(4)]))
    scores = BaselineScores()
    scorer = BaselineScorer(fitted)
    scorer.score_bar(scores, START, _bar([20, 22, 24, 26]), "4/4")
    s = scores.summary()
    # the first note has no previous note (START); the other three follow the rule
    assert s["bigram"]["accuracy"]["pitch"] == pytest.approx(3 / 4)
    assert s["unigram"]["accuracy"]["pitch"] <= 1 / 4
    assert s["bigram"]["nll_per_event"]["pitch"] < s["unigram"]["nll_per_event"]["pitch"]
    assert all(math.isfinite(v) and v >= 0 for v in s["unigram"]["nll_per_event"].values())


def test_copy_previous_bar_scores_a_repeated_bar_perfectly_and_a_first_bar_as_empty():
    bar = _bar([30, 34, 37])
    scorer, scores = BaselineScorer(CountBaselines()), BaselineScores()
    scorer.score_bar(scores, bar, bar, "4/4")                   # the context is the same bar
    assert scores.summary()["copy_previous_bar"]["note_f1_micro"] == 1.0
    first = BaselineScores()
    scorer.score_bar(first, START, bar, "4/4")                  # nothing to copy at a piece's start
    assert first.summary()["copy_previous_bar"]["note_f1_micro"] == 0.0


def test_fits_on_two_shards_merge_to_the_fit_on_both():
    a, b, both = CountBaselines(), CountBaselines(), CountBaselines()
    for i, bar in enumerate([_bar([10, 12]), _bar([40]), _bar([5, 9, 11])]):
        (a if i % 2 else b).fit_bar(START, bar)
        both.fit_bar(START, bar)
    merged = a.merge(b)
    assert merged.bars == both.bars == 3
    for k in both.bigram:
        assert np.array_equal(merged.bigram[k], both.bigram[k]) and np.array_equal(merged.unigram[k], both.unigram[k])


def test_evaluate_reads_the_build_the_run_trained_on(tmp_path):
    """A newer build may put other pieces in the test split: evaluate uses the run's build."""
    import json

    from mahler_dist.evaluate.run import run_build

    run, root = tmp_path / "runs" / "r", tmp_path
    run.mkdir(parents=True)
    assert run_build(run, root) is None                                   # no data.json: current
    (root / "builds" / "b-old").mkdir(parents=True)
    (run / "data.json").write_text(json.dumps({"build": "b-old"}))
    assert run_build(run, root) == "b-old"
    notes = []
    (run / "data.json").write_text(json.dumps({"build": "b-gone"}))
    assert run_build(run, root, say=notes.append) is None and "b-gone" in notes[0]
    (run / "data.json").write_text(json.dumps({"build": "../etc"}))
    assert run_build(run, root) is None                                   # never a path
