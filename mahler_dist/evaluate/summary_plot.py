"""One PNG of an evaluation report that a reader takes in at a glance: the model against its
baselines on the same bars, and how close generated music is to the real one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PROPS = ("offset", "duration", "pitch", "instrument")
MODEL, BIGRAM, UNIGRAM, COPY, CEILING = "#1f77b4", "#ff7f0e", "#bbbbbb", "#2ca02c", "#999999"


def _bars(ax, groups: list[str], series: list[tuple[str, list[float], str]], title: str, ylabel: str,
          ylim: tuple[float, float] | None = None) -> None:
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (label, values, colour) in enumerate(series):
        vals = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label, color=colour)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 5 else 0, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def summary_png(report: dict, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m, b = report["model"], report["baselines"]
    tf, fr, cp = m["teacher_forced"], m["free_running"], b["copy_previous_bar"]
    fig = Figure(figsize=(13, 8.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    _bars(axes[0, 0], list(PROPS), [("model", [tf["accuracy"][p] for p in PROPS], MODEL),
                                    ("bigram", [b["bigram"]["accuracy"][p] for p in PROPS], BIGRAM),
                                    ("most frequent", [b["unigram"]["accuracy"][p] for p in PROPS], UNIGRAM)],
          "teacher-forced accuracy (higher is better)", "accuracy", (0, 1))
    _bars(axes[0, 1], list(PROPS), [("model", [tf["nll_per_event"][p] for p in PROPS], MODEL),
                                    ("bigram", [b["bigram"]["nll_per_event"][p] for p in PROPS], BIGRAM),
                                    ("frequencies", [b["unigram"]["nll_per_event"][p] for p in PROPS], UNIGRAM)],
          "teacher-forced NLL per event (lower is better)", "nats")
    acc, cacc = fr["accuracy_step_aligned"], cp["accuracy_step_aligned"]
    groups = ["note F1", "onset F1", *[f"{p} acc" for p in PROPS]]
    _bars(axes[1, 0], groups,
          [("model", [fr["note_f1_micro"], fr["onset_f1_micro"], *[acc[p] for p in PROPS]], MODEL),
           ("copy the previous bar", [cp["note_f1_micro"], cp["onset_f1_micro"], *[cacc[p] for p in PROPS]], COPY)],
          f"free-running reconstruction ({fr['bars_hit_row_cap']} of {fr['bars']} bars hit the row cap)",
          "score", (0, 1))
    gen = report.get("generation")
    ax = axes[1, 1]
    if gen:
        feats = list(gen["from_start"]["oa"])
        series = [("from START", [gen["from_start"]["oa"][f] for f in feats], MODEL)]
        if gen.get("continuations"):
            series.append(("continuations", [gen["continuations"]["oa"].get(f) for f in feats], BIGRAM))
        series.append(("training split (ceiling)", [gen["ceiling_train_vs_split"]["oa"].get(f) for f in feats],
                       CEILING))
        _bars(ax, feats, series, "generated vs real: overlapping area (1 = indistinguishable)", "OA", (0, 1.05))
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no generation statistics (--generated 0)", ha="center", va="center")
    fig.suptitle(f"{report['run']} / {report['checkpoint']} on {report['bars']} {report['split']} bars "
                 f"(build {report['build']}):  KL {m['kl_bits_per_bar']:.2f} bits/bar, "
                 f"{m['active_units']}/{m['latent_dims']} active units, ELBO {m['elbo_per_bar']:.1f} nats/bar",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    fig.savefig(path)
    return path
