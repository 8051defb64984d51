"""The order in which preprocessing hands files to Ray Data, so that its encode tasks balance.

    order, ntasks = plan_encode_tasks(sizes, nworkers)
    ray.data.read_binary_files([paths[i] for i in order], override_num_blocks=ntasks)

read_binary_files cuts its path list into `ntasks` runs of (nearly) equal file count, one task
each, and Ray Data starts them in list order on whichever CPU is free. Encoding time follows file
size (correlation 0.95 on the team corpora), so the plan fills each run up to a byte target
(byte_targets): the targets shrink along the list, so the big tasks start first and the small last
ones fill the gaps. No task is meant to hold much more than 1/(2 * nworkers) of the bytes or than
ENCODE_TASK_BYTES (runs have equal file counts, so targets guide rather than bound), so a corpus
with a few huge files cannot leave one CPU working while the others wait. Files are placed largest
first, each into the run with the most bytes still missing.

Simulated with the measured per-file times of piano_midi_de + classical_multitrack (bench/
RESULTS.md): 2 CPUs end 5% after the ideal, 8 CPUs 22% (sorted runs: 37%); 10,000 Pareto-sized
files on 8 CPUs: 2% after the ideal (sorted runs: 3.8x the ideal); 20,000 log-normal files
(2 GB) on 2 to 32 CPUs: within 6% of the ideal, every task under 10 MB.

Pure Python: no Ray, so it is unit-tested on its own.
"""

from __future__ import annotations

import heapq
import math

#: Bytes of MIDI per encode task, about (~10 s of one core): short enough for a visible
#: progress bar and for a lost task to cost little, long enough that Ray Data's ~0.15 s between
#: one task's end and the next one's start on that CPU (measured) stays a few percent.
ENCODE_TASK_BYTES = 8 << 20

#: Tasks per CPU at least: fewer leave a long tail, more cost Ray Data's gap between tasks.
TASKS_PER_WORKER = 4


def encode_task_count(sizes: list[int], nworkers: int) -> int:
    """How many encode tasks for files of `sizes` bytes on `nworkers` CPUs."""
    if not sizes:
        return 0
    return min(len(sizes), max(TASKS_PER_WORKER * nworkers, math.ceil(sum(sizes) / ENCODE_TASK_BYTES)))


def run_lengths(nfiles: int, ntasks: int) -> list[int]:
    """The file counts of the runs read_binary_files makes (numpy.array_split's rule)."""
    return [nfiles // ntasks + (1 if i < nfiles % ntasks else 0) for i in range(ntasks)]


def byte_targets(total: int, ntasks: int, nworkers: int) -> list[float]:
    """Guided self-scheduling: each task takes 1/(2 * nworkers) of the bytes still unplanned, at
    most ENCODE_TASK_BYTES, then all are scaled up a little to add up to `total`. A large corpus
    gets equal tasks and a tail of 2 * nworkers shrinking ones; a small one shrinks from the first."""
    targets, remaining = [], float(total)
    for _ in range(ntasks):
        targets.append(min(ENCODE_TASK_BYTES, remaining / (2 * max(nworkers, 1))))
        remaining -= targets[-1]
    scale = total / sum(targets) if sum(targets) else 0.0
    return [t * scale for t in targets]


def plan_encode_tasks(sizes: list[int], nworkers: int) -> tuple[list[int], int]:
    """(a permutation of range(len(sizes)), number of tasks): list the files in that order and
    let read_binary_files cut it into that many runs."""
    ntasks = encode_task_count(sizes, nworkers)
    if not ntasks:
        return [], 0
    total = sum(sizes)
    missing = byte_targets(total, ntasks, nworkers)
    room = run_lengths(len(sizes), ntasks)
    runs: list[list[int]] = [[] for _ in range(ntasks)]
    heap = [(-m, i) for i, m in enumerate(missing)]   # most bytes missing first; ties: earlier run
    heapq.heapify(heap)
    for j in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        _, i = heapq.heappop(heap)
        runs[i].append(j)
        missing[i] -= sizes[j]
        if len(runs[i]) < room[i]:
            heapq.heappush(heap, (-missing[i], i))
    return [j for run in runs for j in run], ntasks
