"""Stage 3 of preprocessing, on the driver from the per-file records alone: each piece's split (by
its hash), the shard plan per split (samples sorted by key, cut into shards of `shard_samples`) and
the corpus statistics kept in the index. No Ray and no sample arrays here: the records are small,
so this is the same whatever the number of nodes or tasks that produced them."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.summary import reason_kind
from mahler_dist.errors import MahlerError


def plan_corpus(records: list[dict], config: DataConfig) -> tuple[list[dict], dict[str, list], dict]:
    """Stage 3: the manifest (records with their split), the shard plan per split and corpus stats."""
    from mahler_dist.music.instruments import DEFAULT_WRITE_BACK, PROGRAM_TO_CLASS
    from mahler_dist.music.vocab import NUM_INSTRUMENTS

    manifest, rows_hist = [], np.zeros(0, np.int64)
    reasons, dropped, merged, moved, metres = Counter(), Counter(), Counter(), Counter(), Counter()
    instruments = np.zeros(NUM_INSTRUMENTS, np.int64)
    programs_by_class: dict[int, Counter] = {}
    per_split: dict[str, list[tuple[str, int]]] = {s: [] for s in S.SPLITS}
    internal = 0
    repairs = Counter()
    for rec in records:
        rec = dict(rec)
        hist = rec.pop("_rows_hist", None)
        internal += bool(rec.pop("_internal_error", False))
        repairs.update(reason_kind(r) for r in rec.get("repairs", ()))
        if rec["status"] == "ok":
            rec["split"] = S.split_of(rec["piece"], config)
            if rec["samples"]:
                per_split[rec["split"]].append((rec["piece"], rec["samples"]))
            hist = np.asarray(hist, np.int64)
            if len(hist) > len(rows_hist):
                rows_hist = np.pad(rows_hist, (0, len(hist) - len(rows_hist)))
            rows_hist[: len(hist)] += hist
            dropped.update(rec["dropped"])
            merged.update(rec["merged"])
            moved.update(rec.get("moved", {}))
            metres.update(rec["metres"])
            for cls, n in rec["instruments"].items():
                instruments[int(cls)] += n
            if rec["split"] == "train":
                for program, n in rec["programs"].items():
                    programs_by_class.setdefault(PROGRAM_TO_CLASS[int(program)], Counter())[int(program)] += n
        else:
            reasons[reason_kind(rec["reason"])] += 1
        manifest.append(rec)
    ok = [m for m in manifest if m["status"] == "ok"]
    ids = Counter(m["piece"] for m in ok)
    if len(ids) != len(ok):   # 64-bit id prefixes of different contents: never seen, but never silent
        clash = [m["path"] for m in ok if ids[m["piece"]] > 1]
        raise MahlerError(f"piece id collision between different files: {', '.join(clash[:4])}")
    write_back = list(DEFAULT_WRITE_BACK)
    for cls, counts in programs_by_class.items():
        write_back[cls] = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    stats = {
        "files": {"total": len(manifest), "ok": len(ok), "rejected": len(manifest) - len(ok), "internal_errors": internal},
        "rejected_reasons": dict(reasons.most_common()),
        "pieces": len(ok), "bars": sum(m["bars"] for m in ok), "samples": sum(m["samples"] for m in ok),
        "bars_too_long": sum(m["bars_too_long"] for m in ok),
        "contexts_too_long": sum(m["contexts_too_long"] for m in ok), "rows": sum(m["rows"] for m in ok),
        "repairs": {"files": sum(1 for m in manifest if m.get("repairs")),
                    "files_ok": sum(1 for m in ok if m.get("repairs")), "kinds": dict(repairs.most_common())},
        "notes": {"source": sum(m["notes_in"] for m in manifest), "kept": sum(m["notes_kept"] for m in ok),
                  "parts": sum(m["note_parts"] for m in ok)},
        "dropped_notes": dict(dropped.most_common()),
        "merged_notes": dict(merged.most_common()),
        "moved_notes": dict(moved.most_common()),
        "rows_per_bar": rows_hist.tolist(),
        "metres": dict(metres.most_common()),
        "instrument_classes": instruments.tolist(),
        "programs_by_class": {str(c): {str(p): n for p, n in sorted(v.items())} for c, v in sorted(programs_by_class.items())},
        "max_rows_per_bar": config.max_rows_per_bar,
        "write_back_programs": write_back,
    }
    plans = {s: S.plan_shards(per_split[s], config.shard_samples) for s in S.SPLITS}
    return manifest, plans, stats
