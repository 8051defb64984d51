"""The quantiser's heuristics on real corpora, each switched off in turn, beside the first quantiser.

    .venv/bin/python bench/quantize_report.py [--limit N] [--out PATH] [--results]
        [--corpora piano_midi_de,orchestral_symphonic,classical_multitrack]
        [--variants "first,default,no cluster_onsets,..."]

Variants: "first" (QuantizeOptions.first(): every heuristic off), "default" (DEFAULT_OPTIONS) and
"no NAME" / "with NAME" for each switch in quantize_options.SWITCHES (the defaults with that one
switched off, or on where it is off by default); all of them unless --variants names some
("no-NAME" and "no_NAME" work too). Every file is read into
memory and parsed (read_midi) once; its Score is then quantised by every variant, file by file
(after one untimed pass, in an order rotated from file to file), so that machine noise hits all
variants alike. Only quantize() is timed; its speed is also given as a ratio to "first" in the
same run (when "first" is among the variants): compare ratios, not notes/s across runs.

The report (Markdown: one table per corpus, variants as columns, metrics as rows) goes to
stdout, to --out PATH, and with --results into bench/RESULTS.md as the section SECTION below
(replaced up to the next "## " line if it is there, else inserted before "## GPU", else
appended). Progress goes to stderr. --limit N takes the first N files (sorted by path) of each
corpus, for quick runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shlex
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mahler_dist.errors import MidiReadError  # noqa: E402
from mahler_dist.music.midi_io import DROP_DRUMS, read_midi  # noqa: E402
from mahler_dist.music.piece import Piece, PieceCol  # noqa: E402
from mahler_dist.music.quantize import metre_ranges, quantize  # noqa: E402
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, SWITCHES, QuantizeOptions  # noqa: E402
from mahler_dist.music.score import NoteCol, Score, sort_notes  # noqa: E402
from mahler_dist.music.timing import TIME_CLASSES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "midi"
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Quantiser heuristics (issue 14): bench/quantize_report.py"
CORPORA = ("piano_midi_de", "orchestral_symphonic", "classical_multitrack")
TOP_REASONS = 5   # rows per kind (dropped, merged, moved, rejected); the rest are summed in one row
WRAP = 100        # paragraph width in the report

#: Duration classes with a triplet part, and those with only duple parts (class 0 is neither).
TRIPLET = np.array([any(p.startswith("t") for p in c.parts) for c in TIME_CLASSES])
DUPLET = np.array([bool(c.parts) for c in TIME_CLASSES]) & ~TRIPLET
GRID = ("1/8 only", "1/6 only", "both", "off both")
HUMAN_ONSET = 12     # ticks (480 per quarter): the onset jitter of the humanised copy, one sigma
HUMAN_HOLD = 0.7     # the humanised copy holds each note for U(HUMAN_HOLD, 1) of its length

LEGEND = (
    "Columns: `first` is the first quantiser (`QuantizeOptions.first()`, every heuristic off), "
    "`default` is `DEFAULT_OPTIONS`, `no X` / `with X` is the defaults with switch X off / on. Notes kept are a share "
    "of the pitched (non-drum) source notes of every parsed file; a rejected file keeps none. Dropped, "
    "merged and moved counts are summed over the accepted files. Onset and duration errors are per "
    "quantised source note (`Piece.quantisation_error`), in beats. Grid shares are over note rows: "
    "POS % 60 == 0 is on the 1/8-beat grid, POS % 80 == 0 on the 1/6-beat grid (the goal for off both "
    "is 0%). Onsets on odd 1/8 points (32nds in 4/4) indicate smearing. Bars compare each piece with "
    "its metre map, over the metres the variant models. The humanised copy of each score has every "
    f"onset moved by N(0, {HUMAN_ONSET} ticks) (480 per quarter) and every note held for "
    f"U({HUMAN_HOLD}, 1) of its length; a note is recovered when the copy's quantisation has it at the "
    "same bar, position, pitch and instrument (and duration) as the score's, under the same variant. "
    "Speed is source notes over the time in "
    "quantize() alone, every variant on the same parsed Scores, interleaved file by file: read the "
    "ratio to `first`, not the absolute figure."
)


# ---------------------------------------------------------------- variants and input

def all_variants() -> dict[str, QuantizeOptions]:
    variants = {"first": QuantizeOptions.first(), "default": DEFAULT_OPTIONS}
    variants.update({f"{'no' if DEFAULT_OPTIONS.is_on(name) else 'with'} {name}": DEFAULT_OPTIONS.toggled(name)
                     for name in SWITCHES})
    return variants


def pick_variants(spec: str | None) -> dict[str, QuantizeOptions]:
    """--variants "first,default,no cluster_onsets" -> {name: options}, in the order given."""
    known = all_variants()
    if not spec:
        return known
    chosen = {}
    for item in spec.split(","):
        name = re.sub(r"^no[-_ ]+", "no ", item.strip())
        if name not in known:
            raise SystemExit(f"unknown variant {item.strip()!r}; known: {', '.join(known)}")
        chosen[name] = known[name]
    return chosen


def load(corpus: Path, limit: int | None) -> list[tuple[str, bytes]]:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in (".mid", ".midi"))
    return [(str(p.relative_to(corpus)), p.read_bytes()) for p in files[:limit]]


def reason_key(reason: str) -> str:
    """A MidiReadError reason with its counts, positions and shares replaced by '#' (metres such
    as 5/4 stay), so that files rejected for the same reason count together."""
    return re.sub(r"(?<![\d/.])\d+(?:\.\d+)?(?![\d/])", "#", reason)


def parse(files: list[tuple[str, bytes]]) -> tuple[list[tuple[str, Score]], Counter]:
    scores, unreadable = [], Counter()
    for name, data in files:
        try:
            scores.append((name, read_midi(data, name=name)))
        except MidiReadError as exc:
            unreadable[reason_key(exc.reason)] += 1
    return scores, unreadable


def pitched_notes(score: Score) -> int:
    return score.source_notes - score.dropped.get(DROP_DRUMS, 0)


def source_bars(score: Score, additive: bool) -> float:
    """Bars in the score's metre map, over the ranges whose metre the variant models."""
    return sum((r.end - r.start) / r.metre.bar_score_ticks for r in metre_ranges(score)
               if r.metre is not None and (additive or not r.metre.additive))


# ---------------------------------------------------------------- measuring

@dataclass
class Tally:
    """What one variant did to one corpus, summed over its files."""

    files: int = 0
    accepted: int = 0
    source_notes: int = 0        # of every file tried (the notes/s numerator)
    pitched: int = 0             # source notes minus drum notes, every file tried
    pitched_rejected: int = 0    # ... of the rejected files
    seconds: float = 0.0         # in quantize() alone
    stats: Counter = field(default_factory=Counter)        # Piece.stats of the accepted files
    rejected: Counter = field(default_factory=Counter)     # reason_key -> files
    errors: list = field(default_factory=list)             # float32 [K, 2] per accepted file
    onsets: Counter = field(default_factory=Counter)       # note rows by GRID class, and "odd 1/8"
    durations: Counter = field(default_factory=Counter)    # note rows: "triplet", "duplet"
    bar_ratios: list = field(default_factory=list)         # piece bars / source bars, per piece
    recovery: Counter = field(default_factory=Counter)     # humanised copy vs the score: "notes", "onsets", "durations"

    def add(self, score: Score, piece: Piece | None, seconds: float, bars: float) -> None:
        self.files += 1
        self.source_notes += score.source_notes
        self.pitched += pitched_notes(score)
        self.seconds += seconds
        if piece is None:
            self.pitched_rejected += pitched_notes(score)
            return
        self.accepted += 1
        self.stats.update(piece.stats)
        self.errors.append(np.asarray(piece.quantisation_error, dtype=np.float32).reshape(-1, 2))
        pos = piece.notes[:, PieceCol.POS]
        eighth, sixth = pos % 60 == 0, pos % 80 == 0
        for key, mask in zip(GRID, (eighth & ~sixth, sixth & ~eighth, eighth & sixth, ~eighth & ~sixth)):
            self.onsets[key] += int(mask.sum())
        self.onsets["odd 1/8"] += int((eighth & ((pos // 60) % 2 == 1)).sum())
        dur = piece.notes[:, PieceCol.DUR]
        self.durations["triplet"] += int(TRIPLET[dur].sum())
        self.durations["duplet"] += int(DUPLET[dur].sum())
        if bars > 0:
            self.bar_ratios.append(len(piece.bars) / bars)

    @property
    def rows(self) -> int:
        return sum(self.onsets[g] for g in GRID)


def humanise(score: Score, seed: int) -> Score:
    """A performed copy of `score`: every onset moved by N(0, HUMAN_ONSET) ticks (clipped to +-2.5
    sigma; chords smear, as played), every note held for U(HUMAN_HOLD, 1) of its length (played
    short). Deterministic per seed; metres and tempi are the score's."""
    rng = np.random.default_rng(seed)
    notes = score.notes.copy()
    n = len(notes)
    if n == 0:
        return score
    start = notes[:, NoteCol.START].astype(np.float64)
    length = (notes[:, NoteCol.END] - notes[:, NoteCol.START]).astype(np.float64)
    jitter = np.clip(rng.normal(0, HUMAN_ONSET, n), -2.5 * HUMAN_ONSET, 2.5 * HUMAN_ONSET)
    new_start = np.maximum(np.round(start + jitter), 0)
    new_len = np.maximum(np.round(length * rng.uniform(HUMAN_HOLD, 1.0, n)), 1)
    notes[:, NoteCol.START] = new_start.astype(np.int64)
    notes[:, NoteCol.END] = (new_start + new_len).astype(np.int64)
    return dataclasses.replace(score, notes=sort_notes(notes))


def recovered(clean: Piece, played: Piece | None) -> tuple[int, int, int]:
    """(notes of the clean piece, how many the played copy has at the same bar, position, pitch
    and instrument, and how many also with the same duration class), as multisets."""
    cols = [PieceCol.BAR, PieceCol.POS, PieceCol.PITCH, PieceCol.INSTR]
    total = len(clean.notes)
    if played is None or total == 0:
        return total, 0, 0

    def overlap(a: np.ndarray, b: np.ndarray) -> int:
        ca = Counter(map(tuple, a.tolist()))
        cb = Counter(map(tuple, b.tolist()))
        return sum((ca & cb).values())

    onsets = overlap(clean.notes[:, cols], played.notes[:, cols])
    durations = overlap(clean.notes[:, cols + [PieceCol.DUR]], played.notes[:, cols + [PieceCol.DUR]])
    return total, onsets, durations


def quantize_timed(score: Score, name: str,
                   options: QuantizeOptions) -> tuple[Piece | None, float, str | None]:
    """(piece or None, seconds in quantize(), rejection reason or None)."""
    t0 = time.perf_counter()
    try:
        piece, reason = quantize(score, name, options), None
    except MidiReadError as exc:
        piece, reason = None, exc.reason
    return piece, time.perf_counter() - t0, reason


def measure(label: str, scores: list[tuple[str, Score]],
            variants: dict[str, QuantizeOptions], humanised: bool) -> dict[str, Tally]:
    tallies = {v: Tally() for v in variants}
    names = list(variants)
    step = max(1, len(scores) // 10)
    for i, (name, score) in enumerate(scores):
        bars = {additive: source_bars(score, additive) for additive in (False, True)}
        quantize_timed(score, name, DEFAULT_OPTIONS)     # untimed: the first pass over a score is slower
        turn = i % len(names)
        played = humanise(score, seed=i)
        for v in names[turn:] + names[:turn]:            # each variant takes every turn in the order
            piece, seconds, reason = quantize_timed(score, name, variants[v])
            tallies[v].add(score, piece, seconds, bars[variants[v].additive_metres])
            if reason is not None:
                tallies[v].rejected[reason_key(reason)] += 1
            elif humanised:
                total, onsets, durations = recovered(piece, quantize_timed(played, name, variants[v])[0])
                tallies[v].recovery.update(notes=total, onsets=onsets, durations=durations)
        if (i + 1) % step == 0 or i + 1 == len(scores):
            progress(f"{label}: {i + 1}/{len(scores)} files x {len(names)} variants")
    for v, t in tallies.items():
        progress(f"{label} {v}: {t.accepted}/{t.files} accepted, quantize() {t.seconds:.2f} s")
    return tallies


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- formatting

Rows = list[tuple[str, list[str]]]


def pct(part: float, whole: float) -> str:
    if not whole:
        return "—"
    share = 100 * part / whole
    return f"{share:.2f}%" if 0 < share < 1 else f"{share:.1f}%"


def error_cells(t: Tally) -> tuple[str, str, str]:
    """(onset median / p95 / max, share of onsets moved, duration median / p95), in beats."""
    err = np.concatenate(t.errors) if t.errors else np.zeros((0, 2), np.float32)
    if not len(err):
        return "—", "—", "—"
    on, du = err[:, 0], err[:, 1]
    on_q, du_q = np.percentile(on, [50, 95]), np.percentile(du, [50, 95])
    return (f"{on_q[0]:.3f} / {on_q[1]:.3f} / {on.max():.2f}", pct(int((on > 1e-6).sum()), len(on)),
            f"{du_q[0]:.3f} / {du_q[1]:.3f}")


def top_rows(counts: list[Counter], kind: str) -> Rows:
    """One row per key (the TOP_REASONS largest in any column), then the rest summed in one row."""
    keys = {k for c in counts for k, v in c.items() if v}
    ranked = sorted(keys, key=lambda k: (-max(c[k] for c in counts), k))
    shown = ranked if len(ranked) <= TOP_REASONS + 1 else ranked[:TOP_REASONS]   # no "1 other reason"
    rows = [(f"{kind}: {k}", [f"{c[k]:,}" for c in counts]) for k in shown]
    rest = ranked[len(shown):]
    if rest:
        rows.append((f"{kind}: {len(rest)} other reasons",
                     [f"{sum(c[k] for k in rest):,}" for c in counts]))
    return rows


def stat_rows(ts: list[Tally], kind: str) -> Rows:
    """Piece.stats "kind: reason" counts, by reason."""
    prefix = f"{kind}: "
    return top_rows([Counter({k[len(prefix):]: v for k, v in t.stats.items() if k.startswith(prefix)})
                     for t in ts], kind)


def speed_rows(tallies: dict[str, Tally]) -> Rows:
    rate = {v: t.source_notes / t.seconds if t.seconds else 0.0 for v, t in tallies.items()}
    base = rate.get("first")
    return [("quantize() source notes/s", [f"{r:,.0f}" for r in rate.values()]),
            ("quantize() speed x first", [f"{r / base:.2f}" if base else "—" for r in rate.values()])]


def metric_rows(tallies: dict[str, Tally]) -> Rows:
    ts = list(tallies.values())
    errors = [error_cells(t) for t in ts]
    kept = [t.stats["kept notes"] for t in ts]
    return [
        ("files accepted", [f"{t.accepted}/{t.files}" for t in ts]),
        ("notes kept (% of pitched)", [f"{k:,} ({pct(k, t.pitched)})" for k, t in zip(kept, ts)]),
        ("pitched notes in rejected files", [f"{t.pitched_rejected:,}" for t in ts]),
        ("note rows (tied parts count)", [f"{t.stats['note parts']:,}" for t in ts]),
        *stat_rows(ts, "dropped"), *stat_rows(ts, "merged"), *stat_rows(ts, "moved"),
        *top_rows([t.rejected for t in ts], "files rejected"),
        ("onset error median / p95 / max (beats)", [e[0] for e in errors]),
        ("onsets moved at all", [e[1] for e in errors]),
        ("duration error median / p95 (beats)", [e[2] for e in errors]),
        *[(f"onsets on grid: {g}", [pct(t.onsets[g], t.rows) for t in ts]) for g in GRID],
        ("onsets on odd 1/8 points", [pct(t.onsets["odd 1/8"], t.rows) for t in ts]),
        ("durations triplet / duplet",
         [f"{pct(t.durations['triplet'], t.rows)} / {pct(t.durations['duplet'], t.rows)}" for t in ts]),
        ("bars / source bars: median (mean)", [bar_ratio_cell(t.bar_ratios) for t in ts]),
        ("humanised copy: onsets recovered", [pct(t.recovery["onsets"], t.recovery["notes"]) for t in ts]),
        ("humanised copy: onset and duration recovered",
         [pct(t.recovery["durations"], t.recovery["notes"]) for t in ts]),
        *speed_rows(tallies),
    ]


def bar_ratio_cell(ratios: list[float]) -> str:
    return f"{np.median(ratios):.3f} ({np.mean(ratios):.3f})" if ratios else "—"


def table(tallies: dict[str, Tally]) -> list[str]:
    lines = ["| | " + " | ".join(f"**{v}**" for v in tallies) + " |", "|---|" + "---|" * len(tallies)]
    return lines + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in metric_rows(tallies)]


def corpus_section(label: str, files: list, scores: list, unreadable: Counter,
                   tallies: dict[str, Tally]) -> list[str]:
    size = sum(len(d) for _, d in files) / 2**20
    notes = sum(s.source_notes for _, s in scores)
    pitched = sum(pitched_notes(s) for _, s in scores)
    line = (f"{len(files)} files ({size:.1f} MiB), {len(scores)} parsed: {notes:,} source notes, "
            f"{pitched:,} pitched (not drums).")
    if unreadable:
        line += " Unreadable: " + "; ".join(f"{r} ({n})" for r, n in unreadable.most_common()) + "."
    return [f"### {label}", "", textwrap.fill(line, WRAP), "", *table(tallies), ""]


def git_state() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def header(argv: list[str], started: datetime, load_avg: float, wall: float) -> list[str]:
    command = shlex.join([".venv/bin/python", "bench/quantize_report.py", *argv])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    run = (f"Run as `{command}` on {started:%Y-%m-%d %H:%M} (code at {git_state()}), in {wall:.0f} s: "
           f"{platform.processor() or platform.machine()}, nproc {cpus}, load average {load_avg:.2f} at "
           f"the start; Python {platform.python_version()}, numpy {np.__version__}.")
    return [SECTION, "", textwrap.fill(run, WRAP, break_on_hyphens=False), "",
            textwrap.fill(LEGEND, WRAP, break_on_hyphens=False), ""]


def update_results(path: Path, report: str) -> None:
    """Replace SECTION in `path` (up to the next '## ' line), else insert it before '## GPU', else
    append it."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    body = report.rstrip("\n") + "\n"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    gpu = next((i for i, line in enumerate(lines) if line.rstrip() == "## GPU"), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [body + ("\n" if end < len(lines) else "")]
    elif gpu is not None:
        lines.insert(gpu, body + "\n")
    else:
        if lines and lines[-1].strip():
            lines.append("\n" if lines[-1].endswith("\n") else "\n\n")
        lines.append(body)
    path.write_text("".join(lines))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default=",".join(CORPORA),
                    help="comma-separated folders under ../shared/data/midi, or paths")
    ap.add_argument("--variants", help="comma-separated: first, default, 'no NAME' (default: all)")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N files of each corpus")
    ap.add_argument("--out", type=Path, metavar="PATH", help="also write the Markdown report here")
    ap.add_argument("--results", action="store_true",
                    help=f"write the report into bench/RESULTS.md as the section {SECTION!r}")
    ap.add_argument("--no-humanise", action="store_true", help="skip the humanised-copy recovery rows (half the time)")
    args = ap.parse_args()
    variants = pick_variants(args.variants)
    started, load_avg, t0 = datetime.now(), os.getloadavg()[0], time.perf_counter()

    sections = []
    for name in (c.strip() for c in args.corpora.split(",") if c.strip()):
        corpus = Path(name) if Path(name).is_dir() else SHARED / name
        if not corpus.is_dir():
            raise SystemExit(f"no corpus folder {corpus}")
        files = load(corpus, args.limit)
        scores, unreadable = parse(files)
        progress(f"{name}: {len(files)} files read, {len(scores)} parsed")
        sections += corpus_section(name, files, scores, unreadable,
                                   measure(name, scores, variants, humanised=not args.no_humanise))

    wall = time.perf_counter() - t0
    report = "\n".join(header(sys.argv[1:], started, load_avg, wall) + sections).rstrip() + "\n"
    if args.out:
        args.out.write_text(report)
    if args.results:
        update_results(RESULTS, report)
        progress(f"wrote {SECTION!r} into {RESULTS}")
    print(report)


if __name__ == "__main__":
    main()
