"""The generation modes of `mahler generate` (reference 5.2), from pieces and units to files.

    pred     N samples of L bars per unit: "-" (unseeded), "Nc" (context of bar N), "Nz"/"Ncz"
             (the first bar's z encodes bar N); a c-unit's context bar is written first.
    recon    each z-unit reconstructed `samples` times: original + reconstructions in one MIDI;
             prints step-aligned accuracy (and perplexity with teacher forcing).
    n_recon  every bar of a piece or of a split; running accuracy; a JSON report.
    intpol   S-step interpolation between two z-units (linear or slerp), context models too.
    n_pred   one z (a z-unit's, or a prior draw per try) decoded under each c-unit's context.

Files go to ROOT/runs/NAME/generated/ with the original's names, each MIDI with a piano roll.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mahler_dist import storage
from mahler_dist.errors import MahlerError
from mahler_dist.generate.generator import Generator, SampleRequest
from mahler_dist.generate.metrics import PROPERTIES, ReconStats
from mahler_dist.generate.output import (corpus_programs, parse_metre, safe_label, timestamp, unique_path,
                                         write_output)
from mahler_dist.generate.sampler import Temperatures
from mahler_dist.generate.units import Unit, UnitError, check_units, parse_units
from mahler_dist.music.rows import BarSample, bar_windows

MODES = ("pred", "recon", "n_recon", "intpol", "n_pred")
_PIECE_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class GenerateOptions:
    types: list[str]
    checkpoint: str = "best"
    file: str | None = None
    units: list[str] = field(default_factory=list)
    samples: int = 1
    length: int = 1
    meter: str | None = None
    use_start_ctx: bool = False      # the default since issue 11; kept so old calls still work
    zero_ctx: bool = False           # default context = an all-zero summary (the original's)
    no_ctx: bool = False
    steps: int = 10
    teacher_forcing: bool = False
    slerp: bool = False
    seed: int | None = None
    temperatures: dict[str, float | None] = field(default_factory=dict)
    decoding: dict[str, float | int | None] = field(default_factory=dict)   # top_p, top_k, max_polyphony
    split: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    plot: bool = True
    max_bars: int | None = None
    max_rows: int | None = None


@dataclass
class PieceWindows:
    """A stored piece (ROOT/pieces) as its bar samples, by bar (not music.piece.Piece, the notes)."""

    piece_id: str
    label: str
    windows: list[BarSample]


@dataclass
class Session:
    root: Path | str
    out_dir: Path           # local: where the files are written
    gen: Generator
    opts: GenerateOptions
    temps: Temperatures
    seed: int
    programs: tuple[int, ...]
    say: Callable[[str], None]
    written: list[Path] = field(default_factory=list)
    reports: dict[str, dict] = field(default_factory=dict)
    upload_to: str | None = None   # an object-store ROOT's runs/NAME/generated: each file is copied there

    @property
    def default_context(self) -> str:
        """The context where a unit gives none: START, the context of every training piece's
        first bar; the all-zero summary (never seen in training) only with zero_ctx."""
        return "zeros" if self.opts.zero_ctx else "start"

    def write(self, stem: str, bars: list[np.ndarray], metres: list, title: str) -> Path:
        path = write_output(self.out_dir, stem, bars, metres, self.programs, title, plot=self.opts.plot)
        self.written.append(path)
        if self.upload_to is None:
            self.say(f"  wrote {path}")
            return path
        for file in (path, path.with_suffix(".png")):
            if file.is_file():
                storage.write_bytes(storage.join(self.upload_to, file.name), file.read_bytes())
        self.say(f"  wrote {storage.join(self.upload_to, path.name)} (local copy {path})")
        return path


def run_generate(root: str | Path, name: str, opts: GenerateOptions,
                 say: Callable[[str], None] = print) -> Session:
    """Run every mode in opts.types in order; returns the session (written files, reports)."""
    bad = [t for t in opts.types if t not in MODES]
    if bad or not opts.types:
        raise MahlerError(f"unknown --type {' '.join(bad) or '(none)'}; "
                          f"use one or more of {', '.join(MODES)}")
    if opts.samples < 1 or opts.length < 1 or opts.steps < 1 or opts.batch_size < 1:
        raise MahlerError("--samples, --length, --steps and --batch-size must be >= 1")
    root = storage.as_root(root)
    gen = Generator.from_run(root, name, opts.checkpoint, device=opts.device)
    if opts.max_rows is not None:
        if opts.max_rows < 1:
            raise MahlerError(f"--max-rows must be >= 1, got {opts.max_rows}")
        gen.max_rows = opts.max_rows
    if opts.zero_ctx and opts.use_start_ctx:
        raise MahlerError("--zero-ctx and --use-start-ctx contradict each other (START is the default)")
    try:
        temps = gen.temperatures.replace(**opts.temperatures)
    except ValueError as e:
        raise MahlerError(f"bad temperature: {e}") from None
    try:
        gen.decoding = gen.decoding.replace(**opts.decoding)
    except ValueError as e:
        raise MahlerError(f"bad decoding limit: {e}") from None
    seed = opts.seed if opts.seed is not None else random.randrange(2**31)
    generated = storage.join(root, "runs", name, "generated")
    local_out = storage.cache_dir(generated) if storage.is_uri(root) else Path(generated)
    session = Session(root, local_out, gen, opts, temps, seed, corpus_programs(root), say,
                      upload_to=generated if storage.is_uri(root) else None)
    say(f"run {name}, checkpoint {gen.checkpoint_name}, seed {seed} (--seed {seed} repeats this call); "
        f"temperatures o {temps.offset} d {temps.duration} p {temps.pitch} i {temps.instrument}; "
        f"top-p {gen.decoding.top_p}, top-k {gen.decoding.top_k or 'off'}, "
        f"max polyphony {gen.decoding.max_polyphony or 'off'}; default context {session.default_context}")
    for mode in opts.types:
        RUNNERS[mode](session)
    return session


# -- pieces -----------------------------------------------------------------------------------


def resolve_piece(root: Path, file: str) -> tuple[str, str]:
    """--file: a piece id (16 hex digits) or an input file's name / stem from the manifest.
    Returns (piece id, label for file names)."""
    from mahler_dist.data.shards import read_manifest

    try:
        manifest = [m for m in read_manifest(root) if m.get("status") == "ok"]
    except OSError:
        manifest = []
    if _PIECE_ID.match(file):
        labels = [Path(m["path"]).stem for m in manifest if m.get("piece") == file]
        piece_id, label = file, (labels[0] if labels else file)
    else:
        hits = [m for m in manifest if file in (m.get("path"), Path(m.get("path", "")).name,
                                                Path(m.get("path", "")).stem)]
        if not hits:
            raise MahlerError(f"--file {file!r}: no such piece (give a piece id from ROOT/manifest.jsonl "
                              "or an input file's name)")
        if len({m["piece"] for m in hits}) > 1:
            raise MahlerError(f"--file {file!r} names several pieces: "
                              + ", ".join(f"{m['path']} ({m['piece']})" for m in hits))
        piece_id, label = hits[0]["piece"], Path(hits[0]["path"]).stem
    from mahler_dist.data.shards import piece_path

    if not storage.exists(piece_path(root, piece_id)):   # in the build ROOT/CURRENT points to
        raise MahlerError(f"--file {file!r}: {piece_path(root, piece_id)} is missing; run `mahler preprocess`")
    return piece_id, label


def load_windows(root: Path, piece_id: str, label: str) -> PieceWindows:
    from mahler_dist.data.shards import load_piece

    stored = load_piece(root, piece_id)
    return PieceWindows(piece_id, label, bar_windows(stored.rows))


def _session_piece(s: Session, units: list[Unit], mode: str) -> PieceWindows | None:
    piece = None
    if s.opts.file:
        piece_id, label = resolve_piece(s.root, s.opts.file)
        piece = load_windows(s.root, piece_id, label)
    check_units(units, mode, len(piece.windows) if piece else None)
    return piece


def _context_of(s: Session, piece: PieceWindows, unit: Unit):
    """The unit's context for encoding/decoding: bar N-1 (or START) with c, else the default."""
    return piece.windows[unit.index].context if unit.ctx else s.default_context


def _context_metre(piece: PieceWindows, index: int) -> str | None:
    """The metre of bar `index`'s context bar, bar index - 1 (None at a chunk start: START).
    The active sets carried into a bar are measured in it (generator._carry)."""
    if index == 0 or piece.windows[index].context[0, 2] < 0:    # START row: duration -1
        return None
    return piece.windows[index - 1].metre


def _unit_context_metre(piece: PieceWindows, unit: Unit) -> str | None:
    """The context metre of a unit's context: its bar's with c, none for the default context."""
    return _context_metre(piece, unit.index) if unit.ctx else None


def _context_bar(piece: PieceWindows, unit: Unit) -> tuple[list[np.ndarray], list]:
    """The context bar to write before a c-unit's output ([] at a chunk start: START)."""
    w = piece.windows[unit.index]
    if not unit.ctx or w.context[0, 2] < 0:    # START row: duration -1
        return [], []
    return [w.context], [parse_metre(piece.windows[unit.index - 1].metre)]


def _label(piece: PieceWindows | None) -> str:
    return safe_label(piece.label) if piece else "none"


def _encode_units(s: Session, piece: PieceWindows, units: list[Unit]) -> dict[int, np.ndarray]:
    """Posterior means of the z-units, one batch: {position in `units`: z}."""
    zs = [(i, u) for i, u in enumerate(units) if u.z]
    if not zs:
        return {}
    ctx = s.gen.context_summary([_context_of(s, piece, u) for _, u in zs])
    mu = s.gen.encode([piece.windows[u.index].inputs for _, u in zs], ctx).cpu().numpy()
    return {i: mu[k] for k, (i, _) in enumerate(zs)}


# -- modes ------------------------------------------------------------------------------------


def _pred(s: Session) -> None:
    units = parse_units(s.opts.units)
    piece = _session_piece(s, units, "pred")
    zs = _encode_units(s, piece, units) if piece else {}
    requests, meta = [], []
    for i, u in enumerate(units):
        seed_metre = piece.windows[u.index].metre if u.index is not None else None
        metre = parse_metre(s.opts.meter or seed_metre)
        ctx = _context_of(s, piece, u) if u.index is not None else s.default_context
        for k in range(s.opts.samples):
            cm = _unit_context_metre(piece, u) if u.index is not None else None
            requests.append(SampleRequest(s.opts.length, s.seed, len(requests), s.temps, metre, ctx,
                                          zs.get(i), cm))
            meta.append((u, k, metre))
    s.say(f"pred: {len(requests)} samples x {s.opts.length} bars, decoded together")
    out = s.gen.sample_many(requests)
    ts = timestamp()
    for (u, k, metre), bars in zip(meta, out):
        pre, pre_m = _context_bar(piece, u) if u.index is not None else ([], [])
        s.write(f"pred_{_label(piece)}_unit{u.label}_try{k}_{ts}", pre + bars, pre_m + [metre] * len(bars),
                f"pred {u.text} try {k}")


def _recon(s: Session) -> None:
    units = parse_units(s.opts.units)
    piece = _session_piece(s, units, "recon")
    bars, index = [], []
    for u in units:
        w = piece.windows[u.index]
        for k in range(s.opts.samples):
            bars.append({"inputs": w.inputs, "active": w.active, "metre": w.metre,
                         "context": _context_of(s, piece, u), "context_metre": _unit_context_metre(piece, u)})
            index.append(k)
    rec = s.gen.reconstruct(bars, s.seed, s.temps, s.opts.teacher_forcing, sample_index=index)
    _print_stats(s, "recon", rec.stats)
    ts = timestamp()
    n = s.opts.samples
    for j, u in enumerate(units):
        w = piece.windows[u.index]
        out = [w.inputs] + rec.rows[j * n:(j + 1) * n]
        metre = parse_metre(w.metre)
        pre, pre_m = _context_bar(piece, u)
        tf = "_tf" if s.opts.teacher_forcing else ""
        s.write(f"recon_{_label(piece)}_unit{u.label}{tf}_{ts}", pre + out, pre_m + [metre] * len(out),
                f"recon {u.text}: original, then {n} reconstruction(s)")
    s.reports["recon"] = rec.stats.summary(s.opts.teacher_forcing)


def _n_recon(s: Session) -> None:
    from mahler_dist.data.shards import read_manifest

    if s.opts.units:
        raise UnitError(" ".join(s.opts.units), "n_recon takes no units: it reconstructs every bar")
    if s.opts.file:
        piece_id, label = resolve_piece(s.root, s.opts.file)
        pieces = [(piece_id, label)]
        scope = safe_label(label)
    else:
        split = s.opts.split or "all"
        if split not in ("train", "val", "test", "all"):
            raise MahlerError(f"--split {split!r}: use train, val, test or all")
        try:
            manifest = [m for m in read_manifest(s.root) if m.get("status") == "ok"
                        and (split == "all" or m.get("split") == split)]
            pieces = [(m["piece"], Path(m["path"]).stem) for m in manifest]
        except OSError:
            if split != "all":
                raise MahlerError(f"--split {split}: ROOT/manifest.jsonl is missing") from None
            from mahler_dist.data.shards import PIECES_DIR, build_root

            store = storage.Store(build_root(s.root))
            stems = [n.removesuffix(".npz") for n in store.children(store.path(PIECES_DIR)) if n.endswith(".npz")]
            pieces = [(stem, stem) for stem in stems if _PIECE_ID.match(stem)]
        scope = split
        if not pieces:
            raise MahlerError(f"n_recon: no pieces in split {split!r} under {s.root}")
    stats = ReconStats()
    ctx_override = s.default_context if s.opts.no_ctx else None
    pending: list[dict] = []
    done = 0

    def flush() -> None:
        nonlocal done
        rec = s.gen.reconstruct(pending, s.seed, s.temps, s.opts.teacher_forcing, context=ctx_override,
                                sample_index=list(range(done, done + len(pending))))
        _merge(stats, rec.stats)
        done += len(pending)
        pending.clear()
        s.say(f"  n_recon {done} bars: {stats.line()}")

    s.say(f"n_recon over {len(pieces)} piece(s) ({scope}), teacher forcing "
          f"{'on' if s.opts.teacher_forcing else 'off'}, context {'default' if s.opts.no_ctx else 'true'}")
    for piece_id, label in pieces:
        if s.opts.max_bars is not None and done + len(pending) >= s.opts.max_bars:
            break
        piece = load_windows(s.root, piece_id, label)
        for b, w in enumerate(piece.windows):
            if s.opts.max_bars is not None and done + len(pending) >= s.opts.max_bars:
                break
            pending.append({**w.as_dict(), "context_metre": _context_metre(piece, b)})
            if len(pending) >= s.opts.batch_size:
                flush()
    if pending:
        flush()
    report = stats.summary(s.opts.teacher_forcing)
    report.update(scope=scope, pieces=len(pieces), no_ctx=s.opts.no_ctx, checkpoint=s.gen.checkpoint_name,
                  seed=s.seed, temperatures=s.temps.__dict__, decoding=s.gen.decoding.__dict__,
                  default_context=s.default_context)
    s.out_dir.mkdir(parents=True, exist_ok=True)
    tags = ("_tf" if s.opts.teacher_forcing else "") + ("_noctx" if s.opts.no_ctx else "")
    path = unique_path(s.out_dir, f"n_recon_{scope}{tags}_{timestamp()}", ".json")
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
    s.written.append(path)
    s.reports["n_recon"] = report
    _print_stats(s, "n_recon", stats)
    s.say(f"  wrote {path}")


def _merge(total: ReconStats, part: ReconStats) -> None:
    for k in PROPERTIES:
        total.correct[k] += part.correct[k]
        total.total[k] += part.total[k]
        total.logp[k] += part.logp[k]
    for k in ("bars", "exact_bars", "f1_sum", "tp", "n_pred", "n_target", "capped"):
        setattr(total, k, getattr(total, k) + getattr(part, k))


def _intpol(s: Session) -> None:
    units = parse_units(s.opts.units)
    piece = _session_piece(s, units, "intpol")
    zu = [u for u in units if u.z]
    cu = [u for u in units if not u.z]
    shared = piece.windows[cu[0].index].context if cu else None
    shared_metre = _context_metre(piece, cu[0].index) if cu else None
    default = shared if shared is not None else s.default_context
    ends = []
    for u in zu:
        w = piece.windows[u.index]
        ends.append({"inputs": w.inputs, "metre": w.metre, "context": w.context if u.ctx else default,
                     "context_metre": _context_metre(piece, u.index) if u.ctx else shared_metre})
    metre = parse_metre(s.opts.meter or piece.windows[zu[0].index].metre)
    rows = s.gen.interpolate(ends[0], ends[1], s.opts.steps, s.opts.slerp, context=shared, seed=s.seed,
                             temperatures=s.temps, metre=metre, context_metre=shared_metre)
    pre, pre_m = _context_bar(piece, cu[0]) if cu else ([], [])
    bars = pre + [ends[0]["inputs"]] + rows + [ends[1]["inputs"]]
    metres = pre_m + [parse_metre(ends[0]["metre"])] + [metre] * len(rows) + [parse_metre(ends[1]["metre"])]
    kind = "slerp" if s.opts.slerp else "linear"
    stem = f"intpol_{_label(piece)}_unit{zu[0].label}_unit{zu[1].label}_intpol_sz_{s.opts.steps}_{kind}"
    s.write(f"{stem}_{timestamp()}",
            bars, metres, f"intpol {zu[0].text} -> {zu[1].text}, {s.opts.steps} steps ({kind})")


def _n_pred(s: Session) -> None:
    units = parse_units(s.opts.units)
    piece = _session_piece(s, units, "n_pred")
    zu = [u for u in units if u.z]
    cu = [u for u in units if u.ctx and not u.z]
    z = None
    if zu:
        z = _encode_units(s, piece, zu)[0]
    contexts = [piece.windows[u.index].context for u in cu]
    metre = parse_metre(s.opts.meter or piece.windows[cu[0].index].metre)
    out = s.gen.decode_under_contexts(contexts, z, s.opts.length, s.opts.samples, s.seed, s.temps, metre,
                                      [_context_metre(piece, u.index) for u in cu])
    ts = timestamp()
    zlabel = f"_z{zu[0].label}" if zu else ""
    for k, per_context in enumerate(out):
        bars, metres = [], []
        for u, gen_bars in zip(cu, per_context):
            pre, pre_m = _context_bar(piece, u)
            bars += pre + gen_bars
            metres += pre_m + [metre] * len(gen_bars)
        s.write(f"n_pred_{_label(piece)}{zlabel}_try{k}_{ts}", bars, metres,
                f"n_pred: one z under {len(cu)} contexts, try {k}")


def _print_stats(s: Session, mode: str, stats: ReconStats) -> None:
    acc = stats.accuracy()
    s.say(f"{mode}: {stats.bars} bars, step-aligned accuracy "
          + "  ".join(f"{k} {acc[k]:.4f}" for k in PROPERTIES)
          + f"; note-set F1 {stats.f1_sum / max(stats.bars, 1):.4f}"
          + f"; exact bars {stats.exact_bars}/{stats.bars}")
    if s.opts.teacher_forcing:
        ppl = stats.perplexity()
        s.say(f"{mode}: perplexity " + "  ".join(f"{k} {v:.4f}" for k, v in ppl.items()))


RUNNERS = {"pred": _pred, "recon": _recon, "n_recon": _n_recon, "intpol": _intpol, "n_pred": _n_pred}
