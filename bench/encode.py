"""MIDI -> rows, single process: notes/s and files/s of `encode_bytes` on piano_midi_de, per stage.

    .venv/bin/python bench/encode.py [--corpus piano_midi_de] [--repeat 1] [--profile 25]

The files are read into memory first, so only the representation code is timed. Each stage of
encode_bytes is timed separately (parse, quantise, rows, bar windows); --profile N prints the N
functions with the most cumulative time under cProfile (a second pass: profiling slows it down).
For scale: the original MahlerNet preprocessor handles about 15k input notes/s on one core.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mahler_dist.errors import MidiReadError  # noqa: E402
from mahler_dist.music.midi_io import read_midi  # noqa: E402
from mahler_dist.music.quantize import quantize  # noqa: E402
from mahler_dist.music.rows import bar_windows, piece_to_rows  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "midi"


def load(corpus: Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    return [(str(p.relative_to(corpus)), p.read_bytes()) for p in files]


def run(files: list[tuple[str, bytes]]) -> tuple[dict[str, float], Counter]:
    """Encode every file stage by stage (what encode_bytes does); returns stage times and counts."""
    t = Counter()
    n = Counter()
    for name, data in files:
        t0 = time.perf_counter()
        try:
            score = read_midi(data, name=name)
            t1 = time.perf_counter()
            t["parse (midi_io.read_midi)"] += t1 - t0
            piece = quantize(score, name)
        except MidiReadError:
            n["rejected"] += 1
            t["rejected files"] += time.perf_counter() - t0
            continue
        t2 = time.perf_counter()
        t["quantise (quantize.quantize)"] += t2 - t1
        rows = piece_to_rows(piece)
        t3 = time.perf_counter()
        t["rows (rows.piece_to_rows)"] += t3 - t2
        samples = bar_windows(rows)
        t["bar windows (rows.bar_windows)"] += time.perf_counter() - t3
        n["ok"] += 1
        n["notes"] += score.source_notes
        n["rows"] += len(rows.rows)
        n["samples"] += len(samples)
    return dict(t), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="piano_midi_de", help="a folder under ../shared/data/midi, or a path")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the corpus (the best is reported)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also print the top N cProfile entries")
    args = ap.parse_args()
    corpus = Path(args.corpus) if Path(args.corpus).is_dir() else SHARED / args.corpus
    files = load(corpus)
    print(f"corpus: {corpus} ({len(files)} files, {sum(len(d) for _, d in files) / 2**20:.1f} MiB)")

    best = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        stages, counts = run(files)
        wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, stages, counts)
    wall, stages, counts = best
    print(f"files: {counts['ok']} ok, {counts['rejected']} rejected; {counts['notes']:,} notes, "
          f"{counts['rows']:,} rows, {counts['samples']:,} bar samples")
    print(f"single process: {wall:.2f} s   {len(files) / wall:,.1f} files/s   {counts['notes'] / wall:,.0f} notes/s   "
          f"{counts['rows'] / wall:,.0f} rows/s   ({counts['notes'] / wall / 15_000:.1f}x the original's ~15k notes/s)")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:34s} {seconds:7.2f} s  {100 * seconds / wall:5.1f} %")
    print(f"peak memory (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          "(all files held in memory)")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(files)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
