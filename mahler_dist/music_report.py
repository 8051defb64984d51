"""`mahler inspect`: what the representation makes of one MIDI file, in words a musician reads.

(Named music_report, not inspect: a module called inspect beside the package's other modules would
shadow the standard library's `inspect` for anything run from inside the package directory.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mahler_dist.music.encode import EncodedPiece, decode_to_midi, encode_file
from mahler_dist.music.instruments import INSTRUMENT_NAMES
from mahler_dist.music.piece import PieceCol
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, QuantizeOptions
from mahler_dist.music.vocab import DURATION


def inspect_report(encoded: EncodedPiece) -> str:
    stats = encoded.stats
    piece, rows = encoded.piece, encoded.rows
    source = stats["source notes"]
    kept = stats["kept notes"]
    pauses = int((rows.rows[:, DURATION] == 0).sum())
    metres = Counter(rows.metres)
    instruments = Counter(int(i) for i in piece.notes[:, PieceCol.INSTR])
    repairs = encoded.score.repairs  # what the reader repaired to read the file (midi_io REPAIRS)
    lines = [
        f"file        {encoded.name}",
        "repairs     " + ("; ".join(repairs) if repairs else "none"),
        f"metres      " + ", ".join(f"{m} ({n} bars)" for m, n in metres.most_common()),
        f"bars        {piece.num_bars} in {int(rows.chunk_start.sum())} chunk(s)",
        f"events      {len(rows.rows)} rows ({len(rows.rows) - pauses} notes, {pauses} pauses); "
        f"rows per bar: median {int(np.median(np.diff(rows.bar_starts)))}, max {int(np.diff(rows.bar_starts).max())}",
        f"notes       {kept} of {source} source notes kept ({100 * kept / max(source, 1):.1f}%)"
        f", written as {stats['note parts']} note parts (long notes become tied parts)",
    ]
    err = piece.quantisation_error
    if len(err):
        lines.append(f"timing      onset shift median {np.median(err[:, 0]):.3f} / p95 {np.percentile(err[:, 0], 95):.3f} beats; "
                     f"duration change median {np.median(err[:, 1]):.3f} / p95 {np.percentile(err[:, 1], 95):.3f} beats")
    if stats["merged: unison doubling"]:
        lines.append(f"merged      {stats['merged: unison doubling']} unison doublings (same onset, pitch and instrument class)")
    for label in ("moved", "dropped"):   # the quantiser's repairs and losses, by reason
        counts = {k[len(label) + 2:]: v for k, v in stats.items() if k.startswith(f"{label}: ") and v}
        if counts:
            lines.append(f"{label:<12}" + "; ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    lines.append("instruments " + ", ".join(f"{INSTRUMENT_NAMES[i]} ({n})" for i, n in instruments.most_common()))
    return "\n".join(lines)


def inspect_file(path: str | Path, write_midi: str | Path | None = None,
                 options: QuantizeOptions = DEFAULT_OPTIONS) -> str:
    """Report on `path` quantised with `options`; with `write_midi`, also write the round-tripped
    MIDI there."""
    encoded = encode_file(path, options)
    report = inspect_report(encoded)
    if write_midi:
        Path(write_midi).write_bytes(decode_to_midi(encoded.rows, encoded.piece))
        report += f"\nwrote       {write_midi} (the file as the model sees it)"
    return report
