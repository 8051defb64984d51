"""The encode-task plan: a permutation whose equal-count runs balance the bytes across CPUs."""

import heapq

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mahler_dist.data.schedule import (
    ENCODE_TASK_BYTES,
    TASKS_PER_WORKER,
    encode_task_count,
    plan_encode_tasks,
    run_lengths,
)


def _runs(sizes, order, ntasks):
    """What read_binary_files does with the ordered list: numpy.array_split into ntasks runs."""
    return [[sizes[j] for j in run] for run in np.array_split(np.array(order, dtype=int), ntasks)]


def _list_schedule(run_bytes, nworkers):
    """When the last CPU finishes if each run starts, in order, on the first free CPU."""
    free = [0] * nworkers
    for b in run_bytes:
        heapq.heappush(free, heapq.heappop(free) + b)
    return max(free)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5_000_000), min_size=0, max_size=300), st.integers(1, 16))
def test_plan_is_a_permutation_cut_like_array_split(sizes, nworkers):
    order, ntasks = plan_encode_tasks(sizes, nworkers)
    assert sorted(order) == list(range(len(sizes)))
    assert ntasks == encode_task_count(sizes, nworkers)
    if sizes:
        assert ntasks == min(len(sizes), max(TASKS_PER_WORKER * nworkers, -(-sum(sizes) // ENCODE_TASK_BYTES)))
        assert [len(r) for r in _runs(sizes, order, ntasks)] == run_lengths(len(sizes), ntasks)
    else:
        assert ntasks == 0


def test_a_few_huge_files_do_not_end_up_in_one_task():
    """Heavy-tailed sizes on 8 CPUs: sorted runs put the biggest files together and one CPU works
    alone for most of the time; the plan ends within one largest file of the ideal."""
    rng = np.random.default_rng(1)
    sizes = (rng.pareto(1.2, 10_000) * 20_000 + 2_000).astype(int).tolist()
    nworkers = 8
    order, ntasks = plan_encode_tasks(sizes, nworkers)
    planned = _list_schedule([sum(r) for r in _runs(sizes, order, ntasks)], nworkers)
    by_size = sorted(range(len(sizes)), key=lambda j: -sizes[j])
    sorted_runs = _list_schedule([sum(r) for r in _runs(sizes, by_size, ntasks)], nworkers)
    ideal = sum(sizes) / nworkers
    assert planned <= ideal + max(sizes)
    assert planned < 0.5 * sorted_runs


def test_big_tasks_come_first_and_small_ones_last():
    sizes = list(range(1, 401))
    order, ntasks = plan_encode_tasks(sizes, 2)
    run_bytes = [sum(r) for r in _runs(sizes, order, ntasks)]
    assert ntasks == 8 and run_bytes[0] > run_bytes[-1]
    assert run_bytes == sorted(run_bytes, reverse=True)


def test_a_large_corpus_gets_tasks_of_bounded_size():
    """2 GB of log-normal files on 2 CPUs: 236 tasks, none much over ENCODE_TASK_BYTES (a task
    of a quarter of the corpus would freeze the progress bar and cost minutes when lost)."""
    rng = np.random.default_rng(2)
    sizes = rng.lognormal(11, 1, 20_000).astype(int).tolist()
    order, ntasks = plan_encode_tasks(sizes, 2)
    run_bytes = [sum(r) for r in _runs(sizes, order, ntasks)]
    assert ntasks == -(-sum(sizes) // ENCODE_TASK_BYTES)
    assert max(run_bytes) <= ENCODE_TASK_BYTES + max(sizes)
    assert _list_schedule(run_bytes, 2) <= 1.02 * sum(sizes) / 2
