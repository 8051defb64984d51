"""The epoch plan: every sample once per epoch, equal batches per rank, budgets, determinism."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahler_dist.data.loader import PlanOptions, plan_epoch


MAX_ROWS = 64   # _lengths draws at most 29 context and 59 input rows


def _lengths(rng, shard_sizes):
    return [np.stack([rng.integers(1, 30, n), rng.integers(1, 60, n)], 1) for n in shard_sizes]


def _batches(plan):
    return [b for r in plan for w in r for b in w]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=8), st.integers(1, 4), st.integers(1, 16),
       st.sampled_from([128, 200, 400, 100_000]), st.integers(1, 50), st.integers(0, 3))
def test_each_sample_once_and_equal_batches(shard_sizes, world, batch_size, budget, window, epoch):
    lengths = _lengths(np.random.default_rng(0), shard_sizes)
    total = sum(shard_sizes)
    opt = PlanOptions(world_size=world, batch_size=batch_size, max_batch_rows=budget, max_rows_per_bar=MAX_ROWS,
                      shuffle_window=window, seed=7)
    try:
        plan = plan_epoch(lengths, epoch, opt)
    except ValueError as e:
        # equal counts may need a merge (a rank with a sample fewer, batch_size 1): refused only
        # when two bars need not fit the budget together
        assert ("no samples" in str(e) and total < world) or ("within max_batch_rows" in str(e)
                                                              and budget < 4 * MAX_ROWS)
        return
    ids = np.concatenate(_batches(plan)) if total else np.zeros(0)
    assert sorted(ids.tolist()) == list(range(total))
    counts = {sum(len(w) for w in r) for r in plan}
    assert len(counts) == 1
    per_rank = counts.pop()
    # only when a rank has no more samples than the batch count may batches have been merged
    may_merge = per_rank == min(sum(len(b) for w in r for b in w) for r in plan)
    flat = np.concatenate(lengths)
    for b in _batches(plan):
        assert len(b) >= 1
        # the budget holds for every batch, merged or not: a step's memory is bounded
        assert len(b) * (flat[b, 0].max() + flat[b, 1].max()) <= budget
        if not may_merge:
            assert len(b) <= batch_size


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 4), st.integers(4, 32),
       st.integers(8, 400), st.integers(0, 3), st.integers(0, 2**16))
def test_no_one_bar_batch_where_it_can_be_avoided(shard_sizes, world, batch_size, window, epoch, seed):
    """With room for two bars in every batch (batch_size >= 4, a budget that does not bind) and at
    least two samples per window, no batch has one bar: not the remainder of a window, not the
    halves of a batch split to equalise the ranks."""
    lengths = _lengths(np.random.default_rng(seed), shard_sizes)
    total = sum(shard_sizes)
    opt = PlanOptions(world_size=world, batch_size=batch_size, max_batch_rows=batch_size * 2 * MAX_ROWS,
                      max_rows_per_bar=MAX_ROWS, shuffle_window=window, seed=seed)
    windows = world * max(1, -(-total // (world * window)))
    if total < 2 * windows:
        return
    plan = plan_epoch(lengths, epoch, opt)
    sizes = [len(b) for b in _batches(plan)]
    assert min(sizes) >= 2 and max(sizes) <= batch_size
    assert sorted(np.concatenate(_batches(plan)).tolist()) == list(range(total))
    assert len({sum(len(w) for w in r) for r in plan}) == 1


@pytest.mark.parametrize("n, world, batch_size", [(17, 1, 16), (33, 1, 8), (9, 1, 8), (18, 2, 8), (34, 2, 16),
                                                  (257, 2, 8), (4097, 1, 64)])
def test_sizes_that_left_a_one_bar_batch(n, world, batch_size):
    """Corpus sizes for which the plan before issue 10 emitted a one-bar batch (a window's
    remainder, or a two-bar batch halved to equalise the ranks)."""
    lengths = _lengths(np.random.default_rng(n), [n])
    opt = PlanOptions(world_size=world, batch_size=batch_size, max_batch_rows=batch_size * 2 * MAX_ROWS,
                      max_rows_per_bar=MAX_ROWS, shuffle_window=256 if world > 1 else 4096)
    for epoch in range(3):
        plan = plan_epoch(lengths, epoch, opt)
        assert min(len(b) for b in _batches(plan)) >= 2
        assert len({sum(len(w) for w in r) for r in plan}) == 1


def test_a_bar_that_fits_only_alone_stays_alone_and_the_others_pair():
    # bar 0 fills the budget by itself; bars 1-4 are short
    lengths = [np.array([[60, 60], [2, 3], [2, 4], [3, 3], [1, 2]])]
    opt = PlanOptions(batch_size=4, max_batch_rows=128, max_rows_per_bar=MAX_ROWS, shuffle=False)
    sizes = sorted(len(b) for b in _batches(plan_epoch(lengths, 0, opt)))
    assert sizes == [1, 4]


def test_lone_bars_are_paired_within_the_budget():
    # the greedy cut under a 200-row budget: [0, 1, 2] (3 x 50), then 3 and 4 alone ([3, 4] would
    # pad to 2 x 104). Bar 4 (the longest) takes bar 2 from the batch of three (2 x 94 rows, the
    # longest bar that pads it least); bar 3 then joins [0, 1] (3 x 60 rows)
    lengths = [np.array([[10, 10], [10, 20], [30, 20], [40, 20], [30, 64]])]
    opt = PlanOptions(batch_size=8, max_batch_rows=200, max_rows_per_bar=MAX_ROWS, shuffle=False)
    batches = _batches(plan_epoch(lengths, 0, opt))
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 1, 3], [2, 4]]


def test_plan_is_deterministic_and_changes_per_epoch():
    lengths = _lengths(np.random.default_rng(1), [50, 40, 30])
    opt = PlanOptions(world_size=2, batch_size=8, max_rows_per_bar=MAX_ROWS, shuffle_window=32, seed=3)
    a, b, c = plan_epoch(lengths, 0, opt), plan_epoch(lengths, 0, opt), plan_epoch(lengths, 1, opt)
    flat = lambda p: [x.tolist() for r in p for w in r for x in w]
    assert flat(a) == flat(b) and flat(a) != flat(c)


def test_batches_are_length_bucketed():
    rng = np.random.default_rng(2)
    lengths = _lengths(rng, [400])
    plan = plan_epoch(lengths, 0, PlanOptions(batch_size=16, max_rows_per_bar=MAX_ROWS, shuffle_window=400))
    flat = lengths[0]
    spreads = [np.ptp(flat[b, 1]) for w in plan[0] for b in w]
    assert np.mean(spreads) < 0.25 * np.ptp(flat[:, 1])   # sorted windows: padding stays small
