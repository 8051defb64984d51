"""Figures: piano rolls of pieces and training curves of runs. No Ray, no pyplot state.

Figures are drawn with matplotlib's object API on the Agg canvas, so plotting works headless, in
threads and inside Ray Serve replicas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _note_table(obj) -> tuple[np.ndarray, list[int], int, list[str]]:
    """(notes [N, 4] = start, end, MIDI pitch, colour key), bar-line ticks, end tick, key names."""
    from mahler_dist.music.instruments import INSTRUMENT_NAMES, PROGRAM_TO_CLASS
    from mahler_dist.music.piece import Piece, PieceCol
    from mahler_dist.music.score import NoteCol, Score
    from mahler_dist.music.vocab import PITCH_LOW

    if isinstance(obj, Piece):
        starts, ends = obj.absolute_times()
        pitches, instruments = obj.notes[:, PieceCol.PITCH] + PITCH_LOW, obj.notes[:, PieceCol.INSTR]
        notes = np.stack([starts, ends, pitches, instruments], 1)
        bars = [b.start for b in obj.bars]
        end = obj.bars[-1].start + obj.bars[-1].metre.bar_score_ticks if obj.bars else 0
        return notes.reshape(-1, 4), bars, end, list(INSTRUMENT_NAMES)
    if isinstance(obj, Score):
        n = np.asarray(obj.notes, dtype=np.int64).reshape(-1, 6)
        cls = np.asarray(PROGRAM_TO_CLASS)[n[:, NoteCol.PROGRAM]] if len(n) else np.zeros(0, np.int64)
        cls = np.where(cls < 0, len(INSTRUMENT_NAMES), cls)
        notes = np.stack([n[:, NoteCol.START], n[:, NoteCol.END], n[:, NoteCol.PITCH], cls], 1)
        end = max(int(obj.end_tick), int(n[:, NoteCol.END].max()) if len(n) else 0)
        bars, changes = [], sorted(obj.metres, key=lambda c: c.tick) or []
        for k, change in enumerate(changes):
            stop = changes[k + 1].tick if k + 1 < len(changes) else end
            length = max(1, 4 * 480 * change.numerator // change.denominator)
            bars.extend(range(int(change.tick), int(stop), length))
        return notes.reshape(-1, 4), bars, end, [*INSTRUMENT_NAMES, "unmapped"]
    notes = np.asarray(obj, dtype=np.int64).reshape(-1, 4)
    end = int(notes[:, 1].max()) if len(notes) else 0
    return notes, [], end, [str(i) for i in range(int(notes[:, 3].max()) + 1 if len(notes) else 0)]


def piano_roll(piece_or_notes, path: str | Path, title: str = "") -> Path:
    """Draw a piano roll as PNG: one bar per note, a colour per instrument class, bar lines.

    Accepts a music.piece.Piece, a music.score.Score, or notes [N, 4] (start tick, end tick,
    MIDI pitch, instrument class). Ticks are 480 per quarter; the x axis is in quarters.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    notes, bars, end, names = _note_table(piece_or_notes)
    quarters = max(end, 1) / 480.0
    fig = Figure(figsize=(min(4 + quarters * 0.35, 40), 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = _colours(len(names))
    used = sorted(set(int(k) for k in notes[:, 3])) if len(notes) else []
    for key in used:
        mine = notes[notes[:, 3] == key]
        boxes = [Rectangle((s / 480.0, p - 0.4), max(e - s, 1) / 480.0, 0.8) for s, e, p in mine[:, :3]]
        ax.add_collection(PatchCollection(boxes, facecolor=cmap[key % len(cmap)], edgecolor="black",
                                          linewidth=0.3))
    for tick in bars:
        ax.axvline(tick / 480.0, color="0.75", linewidth=0.6, zorder=0)
    if len(notes):
        lo, hi = int(notes[:, 2].min()), int(notes[:, 2].max())
        ax.set_ylim(lo - 2, hi + 2)
    else:
        ax.set_ylim(48, 84)
        ax.text(0.5, 0.5, "(no notes)", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_xlim(0, quarters)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    if used:
        ax.legend(handles=[Patch(color=cmap[k % len(cmap)], label=names[k] if k < len(names) else str(k))
                           for k in used], loc="upper right", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _colours(n: int) -> list:
    from matplotlib import colormaps

    base = list(colormaps["tab20"].colors) + list(colormaps["Dark2"].colors)
    return [base[i % len(base)] for i in range(max(n, 1))]


#: `mahler plot` modes, as the original's display_stats.py (reference 6.3), from metrics.jsonl.
CURVE_MODES = {
    "l": ("loss per epoch", [("loss", "")]),
    "p": ("accuracy per epoch (teacher forced)", [("acc_o", "offset"), ("acc_d", "duration"),
                                                  ("acc_p", "pitch"), ("acc_i", "instrument")]),
    "d": ("mean class distance per epoch", [("dist_o", "offset"), ("dist_d", "duration"), ("dist_p", "pitch")]),
    "ls": ("training loss per logged step", [("loss", "")]),
}


def training_curves(mode: str, runs: list[tuple[str, list[dict]]], path: str | Path) -> Path:
    """Plot metrics rows (train.tracking.read_metrics) of one or more runs as PNG.

    l, p, d: per epoch, training solid and validation dashed (validation distances are plotted
    too; the original never recorded them); ls: per logged training step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if mode not in CURVE_MODES:
        raise ValueError(f"unknown plot mode {mode!r}; one of {', '.join(CURVE_MODES)}")
    title, series = CURVE_MODES[mode]
    fig = Figure(figsize=(7 + 3 * (len(series) > 1), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(series), k + 1) for k in range(len(series))]
    colours = _colours(max(len(runs), 1))
    for (label, rows), colour in zip(runs, colours):
        for ax, (key, name) in zip(axes, series):
            if mode == "ls":
                steps = [r for r in rows if r.get("kind") == "step" and key in r]
                ax.plot([r["step"] for r in steps], [r[key] for r in steps], color=colour, label=label)
                ax.set_xlabel("step")
                continue
            epochs = [r for r in rows if r.get("kind") == "epoch"]
            for prefix, style, part in (("train_", "-", "train"), ("val_", "--", "validation")):
                points = [(r["epoch"], r[prefix + key]) for r in epochs if prefix + key in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=f"{label} ({part})")
            ax.set_xlabel("epoch")
            ax.set_title(name, fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
