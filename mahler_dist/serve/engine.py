"""What a generation request means, as Generator calls and an answer (no Ray, no HTTP).

The Serve deployment (serve/app.py) validates a request (schemas.py), loads its model, and calls:
- `plan_sampling` for pred and continue: a `SamplingPlan` of independent `SampleRequest`s, which
  the deployment decodes together with other requests' plans (batching), then `finish`;
- `run_recon` / `run_intpol`, decoded on their own.
Uploads are parsed by the project's own reader under the serve limits; a stored piece is found by
matching the name against the corpus manifest (generate/modes.resolve_piece), never as a path.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mahler_dist.errors import MahlerError
from mahler_dist.generate.generator import Generator, SampleRequest
from mahler_dist.generate.output import parse_metre
from mahler_dist.generate.sampler import Decoding, Temperatures
from mahler_dist.generate.units import parse_unit
from mahler_dist.music.encode import encode_score
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, QuantizeOptions
from mahler_dist.music.instruments import INSTRUMENT_NAMES
from mahler_dist.music.midi_io import read_midi, write_midi
from mahler_dist.music.piece import PieceCol
from mahler_dist.music.rows import BarSample, piece_to_score, rows_to_piece
from mahler_dist.music.timing import Metre
from mahler_dist.music.vocab import PITCH_LOW
from mahler_dist.serve.limits import LIMITS, ServeLimits
from mahler_dist.serve.schemas import Event, GenerateRequest, GenerateResponse, SampleOut


class RequestError(MahlerError, ValueError):
    """A request the schema accepted that still cannot be served (bad upload, unit out of range);
    the message names the field and the reason. Answered with HTTP 400 or 422."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


# -- inputs ----------------------------------------------------------------------------------


def upload_windows(b64: str, field: str = "midi", limits: ServeLimits = LIMITS,
                   quantize: QuantizeOptions = DEFAULT_OPTIONS) -> list[BarSample]:
    """An uploaded MIDI (base64) as bar samples, quantised as the model's data was
    (`quantize`: its run's data.quantize); errors name the field and the reason."""
    if len(b64) > limits.max_upload_b64:
        raise RequestError(f"{field}: upload over {limits.max_upload_bytes} bytes", 413)
    try:
        data = base64.b64decode("".join(b64.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{field}: not base64 ({e})", 400) from None
    if len(data) > limits.max_upload_bytes:     # base64 rounds up to 3 bytes: the exact check
        raise RequestError(f"{field}: upload over {limits.max_upload_bytes} bytes ({len(data)})", 413)
    try:
        score = read_midi(data, name=f"upload {field!r}", limits=limits.read_limits())
        encoded = encode_score(score, f"upload {field!r}", quantize)
    except MahlerError as e:
        raise RequestError(str(e), 400) from None
    if not encoded.samples:
        raise RequestError(f"{field}: the upload holds no bar the representation keeps", 400)
    return encoded.samples


def stored_windows(root: Path, piece: str) -> list[BarSample]:
    from mahler_dist.generate.modes import load_windows, resolve_piece

    try:
        piece_id, label = resolve_piece(root, piece)
        return load_windows(root, piece_id, label).windows
    except MahlerError as e:
        raise RequestError(f"piece {piece!r}: {str(e).split(': ', 1)[-1]}", 404) from None


def request_windows(req: GenerateRequest, root: Path, limits: ServeLimits = LIMITS,
                    quantize: QuantizeOptions = DEFAULT_OPTIONS) -> list[BarSample]:
    if req.midi is not None:
        return upload_windows(req.midi, limits=limits, quantize=quantize)
    return stored_windows(root, req.piece)


def temperatures_of(req: GenerateRequest, gen: Generator) -> Temperatures:
    t = gen.temperatures
    if req.temperature is not None:
        t = Temperatures(*([req.temperature] * 4))
    if req.temperatures is not None:
        t = t.replace(**req.temperatures.model_dump())
    return t


def decoding_of(req: GenerateRequest, gen: Generator) -> Decoding:
    return gen.decoding.replace(top_p=req.top_p, top_k=req.top_k)


def draw_seed(req: GenerateRequest) -> int:
    return req.seed if req.seed is not None else secrets.randbelow(2**31)


# -- pred and continue -------------------------------------------------------------------------


@dataclass
class SamplingPlan:
    requests: list[SampleRequest]
    prefix_bars: list[np.ndarray]       # written before every sample (continue: the upload)
    prefix_metres: list[Metre]
    metre: Metre
    seed: int
    context: dict


def plan_sampling(req: GenerateRequest, gen: Generator, windows: Sequence[BarSample] | None = None) -> SamplingPlan:
    seed = draw_seed(req)
    temps, decoding = temperatures_of(req, gen), decoding_of(req, gen)
    if req.mode == "pred":
        metre = parse_metre(req.metre)
        reqs = [SampleRequest(req.bars, seed, k, temps, metre, req.context, decoding=decoding)
                for k in range(req.samples)]
        return SamplingPlan(reqs, [], [], metre, seed, {"source": req.context})
    if req.mode != "continue" or not windows:
        raise RequestError(f"mode {req.mode!r} is not a sampling mode")
    last = windows[-1]
    metre = parse_metre(req.metre or last.metre)
    z = None
    if req.encode_z and gen.uses_vae:
        z = gen.encode([last.inputs], gen.context_summary([last.context]))[0].cpu().numpy()
    reqs = [SampleRequest(req.bars, seed, k, temps, metre, np.asarray(last.inputs), z, last.metre, decoding)
            for k in range(req.samples)]
    context = {"source": "upload", "bar": len(windows) - 1, "metre": last.metre,
               "rows": np.asarray(last.inputs).tolist(), "z_from_upload": z is not None}
    return SamplingPlan(reqs, [w.inputs for w in windows], [parse_metre(w.metre) for w in windows],
                        metre, seed, context)


def finish_sampling(req: GenerateRequest, plan: SamplingPlan, decoded: list[list[np.ndarray]],
                    model_id: str, programs: tuple[int, ...], batch_size: int = 1) -> GenerateResponse:
    samples = [sample_out(plan.prefix_bars + bars, plan.prefix_metres + [plan.metre] * len(bars),
                          programs, new_from_bar=len(plan.prefix_bars)) for bars in decoded]
    return GenerateResponse(mode=req.mode, model=model_id, seed=plan.seed, samples=samples,
                            context=plan.context, batch_size=batch_size, instruments=list(INSTRUMENT_NAMES))


# -- recon and intpol --------------------------------------------------------------------------


def _unit_bars(req: GenerateRequest, windows: Sequence[BarSample]) -> list[dict]:
    out = []
    for text in req.units or ():
        unit = parse_unit(text)
        if unit.index is None or unit.index >= len(windows):
            raise RequestError(f"units: {text!r} names bar {unit.index}, the piece has {len(windows)} bars "
                               f"(0..{len(windows) - 1})")
        w = windows[unit.index]
        at_start = w.context[0, 2] < 0      # the START row: a chunk's first bar has no context bar
        out.append({"inputs": w.inputs, "active": w.active, "metre": w.metre,
                    "context": w.context if unit.ctx else "start",
                    "context_metre": None if (at_start or not unit.ctx) else windows[unit.index - 1].metre})
    return out


def run_recon(req: GenerateRequest, gen: Generator, windows: Sequence[BarSample], model_id: str,
              programs: tuple[int, ...]) -> GenerateResponse:
    units = _unit_bars(req, windows)
    seed = draw_seed(req)
    bars = [b for b in units for _ in range(req.samples)]
    index = [k for _ in units for k in range(req.samples)]
    rec = gen.reconstruct(bars, seed, temperatures_of(req, gen), req.teacher_forcing, sample_index=index,
                          decoding=decoding_of(req, gen))
    metres = [parse_metre(b["metre"]) for b in units]
    samples = [sample_out([rec.rows[u * req.samples + k] for u in range(len(units))], metres, programs)
               for k in range(req.samples)]
    original = sample_out([b["inputs"] for b in units], metres, programs)
    recon = {"units": list(req.units or ()), "stats": finite(rec.stats.summary(req.teacher_forcing)),
             "original": original.model_dump()}
    return GenerateResponse(mode="recon", model=model_id, seed=seed, samples=samples, recon=recon,
                            instruments=list(INSTRUMENT_NAMES))


def run_intpol(req: GenerateRequest, gen: Generator, windows: Sequence[BarSample], model_id: str,
               programs: tuple[int, ...]) -> GenerateResponse:
    a, b = _unit_bars(req, windows)
    seed = draw_seed(req)
    metre = parse_metre(req.metre or a["metre"])
    try:
        rows = gen.interpolate(a, b, req.steps, slerp=req.slerp, seed=seed,
                               temperatures=temperatures_of(req, gen), metre=metre,
                               decoding=decoding_of(req, gen))
    except MahlerError as e:
        raise RequestError(str(e), 422) from None
    sample = sample_out(rows, [metre] * len(rows), programs)
    return GenerateResponse(mode="intpol", model=model_id, seed=seed, samples=[sample],
                            context={"source": "interpolated", "units": list(req.units or ()),
                                     "slerp": req.slerp, "steps": req.steps},
                            instruments=list(INSTRUMENT_NAMES))


# -- answers ---------------------------------------------------------------------------------


def sample_out(bars: Sequence[np.ndarray], metres: Sequence[Metre], programs: tuple[int, ...],
               new_from_bar: int = 0) -> SampleOut:
    piece = rows_to_piece(list(bars), list(metres))
    midi = write_midi(piece_to_score(piece, programs))
    starts, ends = piece.absolute_times()
    notes = piece.notes
    events = [Event(start=int(s), end=int(e), pitch=int(n[PieceCol.PITCH]) + PITCH_LOW,
                    instrument=int(n[PieceCol.INSTR]), bar=int(n[PieceCol.BAR]))
              for s, e, n in zip(starts, ends, notes)]
    return SampleOut(midi=base64.b64encode(midi).decode("ascii"), metres=[f"{m.numerator}/{m.denominator}" for m in metres],
                     bar_starts=[int(b.start) for b in piece.bars], events=events,
                     stats=sample_stats(notes, len(piece.bars)), new_from_bar=new_from_bar)


def sample_stats(notes: np.ndarray, n_bars: int) -> dict[str, float]:
    """Per-property figures of one answer: what a user checks first."""
    if len(notes) == 0:
        return {"bars": n_bars, "notes": 0, "empty_bars": n_bars}
    pitch = notes[:, PieceCol.PITCH] + PITCH_LOW
    per_bar = np.bincount(notes[:, PieceCol.BAR], minlength=n_bars)
    onsets = {(int(b), int(p)) for b, p in notes[:, [PieceCol.BAR, PieceCol.POS]]}
    return {"bars": n_bars, "notes": int(len(notes)), "notes_per_bar": float(per_bar.mean()),
            "empty_bars": int((per_bar == 0).sum()), "pitch_min": int(pitch.min()), "pitch_max": int(pitch.max()),
            "pitch_mean": float(pitch.mean()), "notes_per_onset": len(notes) / max(len(onsets), 1),
            "instruments": int(len(np.unique(notes[:, PieceCol.INSTR])))}


def finite(value):
    """JSON has no NaN: non-finite floats become None, recursively (numpy scalars as Python's)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
