"""What `mahler preprocess` prints: a build's summary, read from its index alone (so an up-to-date
run and a fresh build print the same thing), and rejection reasons without their particulars."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mahler_dist.data import shards as S


@dataclass
class PreprocessSummary:
    root: str
    up_to_date: bool
    files: int = 0
    ok: int = 0
    rejected: int = 0
    internal_errors: int = 0
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    pieces: int = 0
    bars: int = 0
    bars_too_long: int = 0
    contexts_too_long: int = 0
    repaired: int = 0
    notes_in: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    workers: int = 0
    build: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def notes_per_s(self) -> float:
        return self.notes_in / self.wall_s if self.wall_s else 0.0

    def __str__(self) -> str:
        splits = " / ".join(f"{s} {self.samples.get(s, 0):,}" for s in S.SPLITS)
        shards = " / ".join(str(self.shards.get(s, 0)) for s in S.SPLITS)
        reasons = ", ".join(f"{r} {n}" for r, n in self.top_reasons[:5])
        head = (f"{self.root}: up to date (same input and config; --force rebuilds)" if self.up_to_date else
                f"{self.root}: {self.files} files in {self.wall_s:.1f} s ({self.files_per_s:.1f} files/s, "
                f"{self.notes_per_s:,.0f} notes/s, {self.workers} workers)")
        lines = [head,
                 f"  files:   {self.ok} ok, {self.rejected} rejected" + (f" (top: {reasons})" if reasons else ""),
                 f"  pieces:  {self.pieces:,}   bars: {self.bars:,} ({self.bars_too_long} too long, "
                 f"{self.contexts_too_long} with a too-long context, not written)",
                 f"  repairs: {self.repaired} files read after a repair (see 'repairs' in {S.MANIFEST_NAME})",
                 f"  samples: {splits} (train / val / test) in {shards} shards",
                 f"  output:  build {self.build} ({S.join(self.root, S.CURRENT_NAME)} -> "
                 f"{S.BUILDS_DIR}/{self.build}/: {S.SHARDS_DIR}/, {S.LENGTHS_DIR}/, {S.PIECES_DIR}/, {S.MANIFEST_NAME})"]
        if self.internal_errors:
            lines.append(f"  WARNING: {self.internal_errors} files hit an internal error (a bug in the "
                         f"representation code): see 'internal error' rows in {S.MANIFEST_NAME}")
        return "\n".join(lines)


def summary_from_index(root: str, index: dict, up_to_date: bool) -> PreprocessSummary:
    st = index["stats"]
    return PreprocessSummary(
        root=root, up_to_date=up_to_date, files=st["files"]["total"], ok=st["files"]["ok"],
        rejected=st["files"]["rejected"], internal_errors=st["files"].get("internal_errors", 0),
        top_reasons=list(st["rejected_reasons"].items()), pieces=st["pieces"], bars=st["bars"],
        bars_too_long=st["bars_too_long"], contexts_too_long=st.get("contexts_too_long", 0),
        repaired=st.get("repairs", {}).get("files", 0), notes_in=st["notes"]["source"],
        samples={s: v["samples"] for s, v in index["splits"].items()},
        shards={s: v["shards"] for s, v in index["splits"].items()},
        wall_s=st.get("build", {}).get("wall_s", 0.0), workers=st.get("build", {}).get("workers", 0),
        build=index.get("build", S.LEGACY_BUILD))


def reason_kind(reason: str | None) -> str:
    """A rejection reason without its particulars (for the summary's top reasons)."""
    reason = reason or "unknown"
    if reason.startswith("duplicate of "):
        return "duplicate"
    if reason.startswith("internal error"):
        return "internal error"
    kind = re.split(r" \(|: ", reason, maxsplit=1)[0]
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", kind)
