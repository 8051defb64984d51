"""The batched core loop: B bars decoded step by step at once (reference 5.1, fixed per 9.17-19).

Torch only (no Ray), so it runs in the CLI, on a GPU box and inside Ray Serve alike. Each step,
for every bar still open:

    h = model.step(previous row, its active sets)
    offset     ~ softmax(masked logits / T_o)   metre-invalid classes masked (never sampled)
    time'      = time + ticks(offset)
    END        if time' >= bar length: the bar ends, the step's event is discarded
    beat       = beat_position(time')
    duration   ~ ...  metre mask, plus the heads' next-step reduction (no pause at offset 0)
    pitch, instrument ~ ...   (-1 on pause rows, duration class 0)
    active set of the new row = pitches/instruments whose notes end after time'

END-of-bar design. The rows have no end token, so "the bar is over" is expressed the way the
original expresses it: an offset that moves the time to the bar end or past it. Those classes are
not masked (that would force every bar to run to the row cap); together they are the END event,
sampled with their summed probability mass, and under argmax END wins when that summed mass beats
the most likely other class. The step's event is discarded. So a bar can end right after its last
note, and a bar whose first offset reaches the bar end is silent: it is returned as the data's own
empty-bar row (a pause of exactly one bar, beat slot 0), as every bar has >= 1 row in the batch
contract. The original retried empty bars with a hotter offset temperature (9.17) and resampled
whole steps on invalid classes (9.18); here metre-invalid classes are masked before sampling, and
a row cap (`max_rows`) bounds a model that never ends a bar (9.19).

A model only learns where bars end if training has an END target: one more decoder step after a
bar's last row whose offset target is `end_classes(...)`. Without it (the original's training) a
sampled bar still ends once offsets cross the bar line, but argmax decoding of a memorised bar
repeats its last chord to the row cap.

Randomness is counter-based: every draw is a hash of (sample key, bar, step, property), so a
sample's random numbers depend on its own seed only - not on the batch it is decoded in nor on
the device - and seeded calls are reproducible (up to float rounding of the logits, which can
differ between devices or batch shapes and, rarely, move a draw across a class boundary).
Temperature 0 means argmax.

Truncation and bounds (issue 11, `Decoding`). Argmax and low-temperature decoding of a model
that finds "same onset" (offset class 0) the likeliest offset after every note never ends a bar:
43% of bars ran to the row cap. Three guards, all vectorised over the batch and all off in a
bare `decode_bars` call (the Generator passes the run's `generate` config):
- top-k / top-p (nucleus) per property: only the k likeliest classes, and only the smallest set
  of classes holding p of the model's probability (at temperature 1), can be drawn; temperature
  then reshapes the draw inside that set. For offsets END counts as one event (its summed mass),
  as under argmax. The set always holds the argmax, so top-k 1 or a tiny top-p is argmax, and the
  draws still come from the same counter-based uniforms (deterministic per seed).
- max_polyphony: once an onset has that many notes, offset class 0 is masked for the next row.
- no unison doubling: a (pitch, instrument) already started at this onset is never repeated:
  the pitch is drawn again with the pitches that instrument already has at the onset masked
  (the instrument is drawn after the pitch, so this is the mask applied once the instrument is
  known). The data has no such pairs (quantize merges them), so a model asking for one loops.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from mahler_dist.model.heads import MASK_VALUE
from mahler_dist.music import vocab as V
from mahler_dist.music.timing import (CLASS_TICKS, TICKS_PER_BEAT, Metre, allowed_mask,
                                      class_of_ticks, duration_mask)

PROPERTY_INDEX = {"offset": 0, "duration": 1, "pitch": 2, "instrument": 3}
_EIGHTH = TICKS_PER_BEAT // 2
_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Temperatures


@dataclass(frozen=True)
class Temperatures:
    """Per-property sampling temperatures; 0 = argmax (reference 6.4 `generation_temperature`)."""

    offset: float = 1.0
    duration: float = 1.0
    pitch: float = 1.0
    instrument: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{f.name} temperature must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_config(cls, gen_cfg) -> Temperatures:
        return cls(gen_cfg.offset_temperature, gen_cfg.duration_temperature,
                   gen_cfg.pitch_temperature, gen_cfg.instrument_temperature)

    @classmethod
    def argmax(cls) -> Temperatures:
        return cls(0.0, 0.0, 0.0, 0.0)

    def replace(self, **changes: float | None) -> Temperatures:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: float(v) for k, v in changes.items() if v is not None})
        return Temperatures(**values)

    def as_list(self) -> list[float]:
        return [self.offset, self.duration, self.pitch, self.instrument]


DEFAULT_MAX_POLYPHONY = 12     # config.GenerateConfig.max_polyphony


@dataclass(frozen=True)
class Decoding:
    """Truncation and bounds of decoding (config `generate.top_p/top_k/max_polyphony`).

    top_p: nucleus mass in (0, 1], 1 = off; top_k: classes kept, 0 = off (both for every
    property); max_polyphony: notes at one onset, then offset class 0 is masked (and no
    (pitch, instrument) repeats at an onset); 0 = neither.

    Default 12, from the corpora's notes per onset and the row cap. piano-midi.de (60 pieces,
    62,870 onsets): at most 12, 99.99% <= 10, so nothing is cut. A model looping on "same onset"
    fills every onset to the bound: 16 sixteenth-note onsets x 12 = 192 rows stay under the
    256-row cap, where 16 x 16 reaches it. Orchestral corpora have bigger chords (onsets above
    12 notes: orchestral_symphonic 6.1%, classical_multitrack 3.2%; above 24: 0.4%, 0.1%): raise
    `generate.max_polyphony` in such a run's config.yaml (24 keeps 99.6% of their onsets)."""

    top_p: float = 1.0
    top_k: int = 0
    max_polyphony: int = DEFAULT_MAX_POLYPHONY

    def __post_init__(self) -> None:
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        for name in ("top_k", "max_polyphony"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {v!r}")

    @classmethod
    def from_config(cls, gen_cfg) -> Decoding:
        return cls(gen_cfg.top_p, gen_cfg.top_k, gen_cfg.max_polyphony)

    @classmethod
    def off(cls) -> Decoding:
        """No truncation, no bounds (the decoding before issue 11)."""
        return cls(1.0, 0, 0)

    def replace(self, **changes: float | int | None) -> Decoding:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return Decoding(**values)


# --------------------------------------------------------------------------------------------
# Counter-based random numbers


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the 'lowbias32' finaliser) on int64 tensors holding 0..2^32-1."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """mix32 on a Python int (the same function)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_key(seed: int, index: int = 0) -> int:
    """The 32-bit stream key of sample `index` of a call seeded with `seed` (any Python int)."""
    k = _mix32_int((seed & _M32) ^ _mix32_int(((seed >> 32) & _M32) + 0x9E3779B9))
    return _mix32_int(k ^ _mix32_int((index & _M32) + 0x85EBCA6B))


def substream(h: torch.Tensor, counter: int | torch.Tensor) -> torch.Tensor:
    """The hash state after one more counter: mix32(h ^ mix32(counter + c))."""
    if isinstance(counter, int):
        return mix32(h ^ _mix32_int(counter + 0x632BE5AB))
    return mix32(h ^ mix32(counter.to(torch.int64) + 0x632BE5AB))


def to_unit(h: torch.Tensor) -> torch.Tensor:
    """Hash states -> U[0, 1) float32 (24-bit resolution)."""
    return (h >> 8).to(torch.float32) / float(1 << 24)


def uniform(keys: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """U[0, 1) float32 per key [B], a pure function of (key, counters)."""
    h = keys
    for c in counters:
        h = substream(h, c)
    return to_unit(h)


def normal(keys: torch.Tensor, dim: int, *counters: int) -> torch.Tensor:
    """N(0, 1) float32 [B, dim] by Box-Muller from counter-based uniforms."""
    j = torch.arange(dim, device=keys.device, dtype=torch.int64)
    k = keys.unsqueeze(1).expand(-1, dim)
    u1 = uniform(k, *counters, j, 1) + 0.5 / (1 << 24)      # (0, 1]
    u2 = uniform(k, *counters, j, 2)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)


def nucleus_mask(scores: torch.Tensor, probs: torch.Tensor, top_k: torch.Tensor | None,
                 top_p: torch.Tensor | None) -> torch.Tensor:
    """bool [B, C]: the classes top-k (long [B], 0 = all) and top-p (float [B], 1 = all) keep.
    Classes rank by `scores` [B, C] (descending; ties: the lower index first, as argmax); `probs`
    [B, C] are their probabilities (mass fractions of each row's total). A class is kept if its
    rank is < k and the mass ranked before it is < p; the first class always is."""
    B, C = scores.shape
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    p_sorted = probs.gather(-1, order)
    rank = torch.arange(C, device=scores.device).unsqueeze(0)
    keep = torch.ones(B, C, dtype=torch.bool, device=scores.device)
    if top_p is not None:
        top_p = top_p.to(probs.dtype).unsqueeze(-1)
        before = p_sorted.cumsum(-1) - p_sorted
        keep &= (before < top_p * p_sorted.sum(-1, keepdim=True)) | (top_p >= 1.0) | (rank == 0)
    if top_k is not None:
        top_k = top_k.unsqueeze(-1)
        keep &= (top_k <= 0) | (rank < top_k)
    return torch.zeros_like(keep).scatter(-1, order, keep)


def sample_classes(logits: torch.Tensor, temperature: torch.Tensor, u: torch.Tensor,
                   top_k: torch.Tensor | None = None, top_p: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF sampling of softmax(logits / T) with the given uniforms; T == 0: argmax.
    logits [B, C] (masked classes at MASK_VALUE), temperature [B], u [B] -> long [B].
    top_k (long [B], 0 = off) / top_p (float [B], 1 = off): only the classes `nucleus_mask`
    keeps on the model's distribution (T = 1) can be drawn; None: no truncation."""
    greedy = logits.argmax(-1)
    t = temperature.clamp(min=1e-6).unsqueeze(-1)
    if top_k is not None or top_p is not None:
        keep = nucleus_mask(logits, torch.softmax(logits, dim=-1), top_k, top_p)
        logits = logits.masked_fill(~keep, MASK_VALUE)
    probs = torch.softmax(logits / t, dim=-1)
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    # right=True: the first class whose cdf exceeds the target has probability > 0.
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return torch.where(temperature > 0, drawn, greedy)


def sample_offsets(logits: torch.Tensor, temperature: torch.Tensor, u: torch.Tensor,
                   ends: torch.Tensor, top_k: torch.Tensor | None = None,
                   top_p: torch.Tensor | None = None) -> torch.Tensor:
    """Offsets with END as one event: the classes in `ends` [B, 60] (those reaching the bar end)
    together. Sampling (T > 0) draws END with their summed mass; argmax (T == 0) picks END when
    that summed mass beats the best single non-END class (then its most likely END class).
    top-k / top-p rank END as that one event too: kept, all its classes can be drawn."""
    probs = torch.softmax(logits, dim=-1)
    end_mass = (probs * ends).sum(-1)
    if top_k is not None or top_p is not None:
        events = torch.cat([probs.masked_fill(ends, 0.0), end_mass.unsqueeze(-1)], -1)   # [B, 61]
        keep = nucleus_mask(events, events, top_k, top_p)
        keep = torch.where(ends, keep[:, -1:], keep[:, :-1])
        drawn = sample_classes(logits.masked_fill(~keep, MASK_VALUE), temperature, u)
    else:
        drawn = sample_classes(logits, temperature, u)
    best_cont, cont = probs.masked_fill(ends, -1.0).max(-1)
    best_end = probs.masked_fill(~ends, -1.0).argmax(-1)
    greedy = torch.where(end_mass > best_cont, best_end, cont)
    return torch.where(temperature > 0, drawn, greedy)


def end_classes(last_time: torch.Tensor, bar_ticks: torch.Tensor, offset_ok: torch.Tensor) -> torch.Tensor:
    """The END target of a bar, for training: the shortest allowed offset class that takes the
    time from the bar's last onset (`last_time`, model ticks) to the bar end or past it.
    long [B], long [B], bool [B, 60] -> long [B]. (A silent bar's pause row already reaches the
    end; its END target is class 0.) The generator's END rule accepts any such class."""
    ticks = _TICKS.to(last_time.device)
    reaches = (last_time.unsqueeze(1) + ticks.unsqueeze(0)) >= bar_ticks.unsqueeze(1)
    return (reaches & offset_ok).int().argmax(-1)


# --------------------------------------------------------------------------------------------
# Metre tables and active sets


_TICKS = torch.as_tensor(CLASS_TICKS, dtype=torch.int64)


@dataclass
class MetreTables:
    bar_ticks: torch.Tensor     # long [B]
    offset_ok: torch.Tensor     # bool [B, 60]
    duration_ok: torch.Tensor   # bool [B, 60] (class 0, the pause, included)


def metre_tables(metres: Sequence[Metre], device: torch.device | str) -> MetreTables:
    off = np.stack([allowed_mask(m) for m in metres])
    dur = np.stack([duration_mask(m) for m in metres])
    dur[:, 0] = True
    return MetreTables(torch.tensor([m.bar_ticks for m in metres], dtype=torch.int64, device=device),
                       torch.from_numpy(off).to(device), torch.from_numpy(dur).to(device))


def silent_row(metre: Metre) -> np.ndarray:
    """The data's empty bar: one pause row of exactly a bar, beat slot 0 (music/rows.py)."""
    return np.array([[class_of_ticks(metre.bar_ticks), 0, 0, V.NONE, V.NONE]], dtype=V.ROW_DTYPE)


def beat_of(time: torch.Tensor) -> torch.Tensor:
    """timing.beat_position on a tensor of model ticks from the bar start."""
    on_grid = (time % _EIGHTH == 0) & (time >= 0) & (time < 8 * _EIGHTH)
    return torch.where(on_grid, time // _EIGHTH, torch.full_like(time, V.NONE))


def pack_active(pitches: torch.Tensor, instruments: torch.Tensor) -> torch.Tensor:
    """bool [B, 96], [B, 23] -> uint8 [B, 15], little bit order as vocab.pack_active."""
    bits = torch.cat([pitches, instruments], -1).to(torch.uint8)
    pad = V.ACTIVE_BYTES * 8 - bits.shape[-1]
    bits = torch.nn.functional.pad(bits, (0, pad)).view(bits.shape[0], V.ACTIVE_BYTES, 8)
    weights = (1 << torch.arange(8, device=bits.device, dtype=torch.int64)).to(torch.uint8)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def carry_from_rows(rows: np.ndarray, metre: Metre) -> tuple[np.ndarray, np.ndarray]:
    """End ticks, relative to the START of the bar after `rows`' bar, of the notes of `rows`
    still sounding there: (int64 [96], int64 [23]); <= 0 means not sounding. This seeds the
    active sets of a bar decoded after a given context bar (the data's sets span bar lines)."""
    from mahler_dist.music.rows import decode_bar

    p_end = np.zeros(V.NUM_PITCHES, dtype=np.int64)
    i_end = np.zeros(V.NUM_INSTRUMENTS, dtype=np.int64)
    for pos, dur, pitch, instr in decode_bar(rows, metre.bar_ticks):
        end = pos + int(CLASS_TICKS[dur]) - metre.bar_ticks
        p_end[pitch] = max(p_end[pitch], end)
        i_end[instr] = max(i_end[instr], end)
    return p_end, i_end


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class DecodedBars:
    rows: list[np.ndarray]          # per sample: int8 [n, 5] (>= 1 row: a silent bar is the pause row)
    capped: np.ndarray              # bool [B]: stopped by max_rows, not by END
    pitch_end: torch.Tensor         # long [B, 96]: note ends relative to this bar's start
    instr_end: torch.Tensor         # long [B, 23]


def decode_bars(model, state, metres: Sequence[Metre], temperatures: torch.Tensor,
                keys: torch.Tensor, bar_index: torch.Tensor | int = 0, *,
                pitch_end: torch.Tensor | None = None, instr_end: torch.Tensor | None = None,
                max_rows: int = 256, sync_every: int = 8, top_k: torch.Tensor | int | None = None,
                top_p: torch.Tensor | float | None = None,
                max_polyphony: torch.Tensor | int | None = None) -> DecodedBars:
    """Decode one bar for each of B samples from an initial decoder state (model.init_decoder).

    metres: B metres; temperatures float [B, 4] (o, d, p, i; 0 = argmax); keys long [B]
    (sample_key); bar_index: the bar's number in its chain (a random-stream counter);
    pitch_end/instr_end long [B, 96]/[B, 23]: ends (model ticks from this bar's start) of notes
    sounding into the bar, for the active sets (None: nothing sounding).
    top_k long [B, 4] / [B] / int (0 = off), top_p float [B, 4] / [B] / float (1 = off), per
    property (o, d, p, i); max_polyphony long [B] / int: notes at one onset before offset class 0
    is masked, with no (pitch, instrument) pair twice at one onset (module docstring); 0: neither.
    None: all off.

    On CPU, oneDNN (mkldnn) is off during the loop: its LSTM costs 2-4x more than the native
    kernel for a single time step (measured: torch 2.13, x86, batch 1 and 64). The switch is
    process-global, so concurrent CPU decoding threads share it (harmless).
    """
    B, device = keys.shape[0], keys.device
    limits = _Limits(_per_property(top_k, B, torch.int64, device, off=0),
                     _per_property(top_p, B, torch.float32, device, off=1.0),
                     _per_sample(max_polyphony, B, device))
    args = (model, state, metres, temperatures, keys, bar_index, pitch_end, instr_end, max_rows,
            sync_every, limits)
    if keys.device.type != "cpu":
        return _decode_bars(*args)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return _decode_bars(*args)
    finally:
        torch.backends.mkldnn.enabled = before


@dataclass
class _Limits:
    top_k: torch.Tensor | None          # long [B, 4], None: no top-k anywhere
    top_p: torch.Tensor | None          # float [B, 4], None: no top-p anywhere
    max_polyphony: torch.Tensor | None  # long [B], None: no bound

    def k(self, prop: int) -> torch.Tensor | None:
        return None if self.top_k is None else self.top_k[:, prop]

    def p(self, prop: int) -> torch.Tensor | None:
        return None if self.top_p is None else self.top_p[:, prop]


def _per_property(value, B: int, dtype, device, off) -> torch.Tensor | None:
    """A scalar, [B] or [B, 4] setting as [B, 4]; None when absent or off for every sample
    (then the sampler skips the work and draws exactly as without it)."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=dtype, device=device)
    t = (t.reshape(1, 1) if t.dim() == 0 else t.reshape(B, -1)).expand(B, 4)
    return None if bool((t == off).all()) else t


def _per_sample(max_polyphony, B: int, device) -> torch.Tensor | None:
    if max_polyphony is None:
        return None
    t = torch.as_tensor(max_polyphony, dtype=torch.int64, device=device).expand(B)
    return None if bool((t <= 0).all()) else t


def _mask_unless_all(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits with `mask` [B, C] classes masked, except in rows where nothing would be left."""
    masked = logits.masked_fill(mask, MASK_VALUE)
    some_left = (masked > MASK_VALUE / 2).any(-1, keepdim=True)
    return torch.where(some_left, masked, logits)


@torch.no_grad()
def _decode_bars(model, state, metres: Sequence[Metre], temperatures: torch.Tensor, keys: torch.Tensor,
                 bar_index: torch.Tensor | int, pitch_end: torch.Tensor | None,
                 instr_end: torch.Tensor | None, max_rows: int, sync_every: int,
                 limits: _Limits) -> DecodedBars:
    device = keys.device
    B = keys.shape[0]
    tables = metre_tables(metres, device)
    ticks = _TICKS.to(device)
    heads = model.heads
    temperatures = temperatures.to(device=device, dtype=torch.float32)
    bar_index = torch.as_tensor(bar_index, dtype=torch.int64, device=device).expand(B)
    pitch_end = (torch.zeros(B, V.NUM_PITCHES, dtype=torch.int64, device=device)
                 if pitch_end is None else pitch_end.to(device).clone())
    instr_end = (torch.zeros(B, V.NUM_INSTRUMENTS, dtype=torch.int64, device=device)
                 if instr_end is None else instr_end.to(device).clone())
    time = torch.zeros(B, dtype=torch.int64, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    count = torch.zeros(B, dtype=torch.int64, device=device)
    prev = torch.full((B, V.ROW_WIDTH), V.NONE, dtype=torch.int64, device=device)
    prev_active = torch.zeros(B, V.ACTIVE_BYTES, dtype=torch.uint8, device=device)
    rows_out, valid_out = [], []
    arange_b = torch.arange(B, device=device)
    none = torch.full((B,), V.NONE, dtype=torch.int64, device=device)
    bounded = limits.max_polyphony is not None
    on_cpu = device.type == "cpu"
    if bounded:
        guard = (limits.max_polyphony > 0).unsqueeze(1)                     # [B, 1]
        at_onset = torch.zeros(B, dtype=torch.int64, device=device)          # notes at `time`
        # (pitch, instrument) pairs started at `time`
        pairs = torch.zeros(B, V.NUM_PITCHES, V.NUM_INSTRUMENTS, dtype=torch.bool, device=device)

    bar_stream = substream(keys, bar_index)
    props = torch.tensor([_mix32_int(k + 0x632BE5AB) for k in range(4)], device=device)
    for step in range(max_rows + 1):
        h, state = model.step(prev, prev_active, state)                      # [B, D]
        # = uniform(keys, bar_index, step, prop) for the four properties, in one go
        u = to_unit(mix32(substream(bar_stream, step).unsqueeze(1) ^ props))  # [B, 4]
        logits = heads.offset_logits(h).masked_fill(~tables.offset_ok, MASK_VALUE)
        if bounded:   # the onset holds max_polyphony notes: no further "same onset" (class 0)
            full = guard[:, 0] & (at_onset >= limits.max_polyphony)
            logits[:, 0] = torch.where(full, torch.full_like(logits[:, 0], MASK_VALUE), logits[:, 0])
        ends = (time.unsqueeze(1) + ticks) >= tables.bar_ticks.unsqueeze(1)     # [B, 60]
        offset = sample_offsets(logits, temperatures[:, 0], u[:, 0], ends, limits.k(0), limits.p(0))
        new_time = time + ticks[offset]
        if bounded:   # a new onset starts empty (class 0 is the only zero-tick class)
            same = (offset == 0).long()
            at_onset = at_onset * same
            pairs = pairs & same.bool().view(B, 1, 1)
        # END: the offset reaches the bar end (or the row cap is hit); the event is discarded.
        done = done | (new_time >= tables.bar_ticks) | (count >= max_rows)
        beat = beat_of(new_time)
        logits = heads.duration_logits(h, offset, beat).masked_fill(~tables.duration_ok, MASK_VALUE)
        duration = sample_classes(logits, temperatures[:, 1], u[:, 1], limits.k(1), limits.p(1))
        note = duration > 0
        pitch_logits = heads.pitch_logits(h, offset, beat, duration, prev[:, V.PITCH])
        pitch = torch.where(note, sample_classes(pitch_logits, temperatures[:, 2], u[:, 2], limits.k(2),
                                                 limits.p(2)), none)
        logits = heads.instrument_logits(h, offset, beat, duration, pitch)
        instrument = torch.where(note, sample_classes(logits, temperatures[:, 3], u[:, 3], limits.k(3),
                                                      limits.p(3)), none)
        if bounded:
            # No unison doubling: a (pitch, instrument) already started at this onset is drawn
            # again as a pitch with the pitches that instrument has here masked (same uniform);
            # the instrument stays. (The pitch comes before the instrument, so the pitch is masked
            # given the instrument after the fact.)
            repeat = note & guard[:, 0] & pairs[arange_b, pitch.clamp(min=0), instrument.clamp(min=0)]
            if not on_cpu or bool(repeat.any()):     # (a free check on CPU; no sync on a GPU)
                taken = pairs[arange_b, :, instrument.clamp(min=0)] & repeat.unsqueeze(1)   # [B, 96]
                redrawn = sample_classes(_mask_unless_all(pitch_logits, taken), temperatures[:, 2],
                                         u[:, 2], limits.k(2), limits.p(2))
                pitch = torch.where(repeat, redrawn, pitch)

        # The row's active sets: notes sounding at its onset before it (ending after time').
        active = pack_active(pitch_end > new_time.unsqueeze(1), instr_end > new_time.unsqueeze(1))
        row = torch.stack([offset, beat, duration, pitch, instrument], dim=1)
        keep = ~done
        add = keep & note
        end = new_time + ticks[duration]
        p_idx, i_idx = pitch.clamp(min=0), instrument.clamp(min=0)
        pitch_end[arange_b, p_idx] = torch.where(add, torch.maximum(pitch_end[arange_b, p_idx], end),
                                                 pitch_end[arange_b, p_idx])
        instr_end[arange_b, i_idx] = torch.where(add, torch.maximum(instr_end[arange_b, i_idx], end),
                                                 instr_end[arange_b, i_idx])
        if bounded:
            at_onset = at_onset + add.long()
            pairs[arange_b, p_idx, i_idx] = pairs[arange_b, p_idx, i_idx] | add
        time = torch.where(keep, new_time, time)
        count = count + keep.long()
        prev = torch.where(keep.unsqueeze(1), row, prev)
        prev_active = torch.where(keep.unsqueeze(1), active, prev_active)
        rows_out.append(row)
        valid_out.append(keep)
        if (step + 1) % sync_every == 0 and bool(done.all()):
            break

    rows_t = torch.stack(rows_out, 1).cpu().numpy().astype(V.ROW_DTYPE)     # [B, T, 5]
    valid_t = torch.stack(valid_out, 1).cpu().numpy()                       # [B, T]
    capped = (count >= max_rows).cpu().numpy()
    rows = []
    for b in range(B):
        r = rows_t[b][valid_t[b]]
        rows.append(r if len(r) else silent_row(metres[b]))
    return DecodedBars(rows, capped, pitch_end, instr_end)


# --------------------------------------------------------------------------------------------
# Teacher forcing


@torch.no_grad()
def teacher_forced_rows(logits: dict[str, torch.Tensor], rows: torch.Tensor, lengths: torch.Tensor,
                        metres: Sequence[Metre], temperatures: torch.Tensor, keys: torch.Tensor
                        ) -> tuple[list[np.ndarray], dict[str, torch.Tensor]]:
    """Predicted rows under full teacher forcing (every head sees the true earlier properties of
    its event and the true previous rows), and the log-probabilities of the targets.

    logits: the four heads' [B, T, C] logits from a teacher-forced pass; rows long [B, T, 5]
    (targets, padding -1); lengths [B]. Returns (rows per sample, {property: log p [B, T]}),
    log p at temperature 1 over the model's own (unmasked) distribution, 0 where no target.
    """
    device = rows.device
    B, T = rows.shape[:2]
    tables = metre_tables(metres, device)
    temperatures = temperatures.to(device=device, dtype=torch.float32)
    ticks = _TICKS.to(device)
    masks = {"offset": tables.offset_ok, "duration": tables.duration_ok}
    columns = {"offset": V.OFFSET, "duration": V.DURATION, "pitch": V.PITCH, "instrument": V.INSTRUMENT}
    predicted, logp = {}, {}
    steps = torch.arange(T, device=device)
    for name, k in PROPERTY_INDEX.items():
        lg = logits[name].float()                                           # [B, T, C]
        target = rows[..., columns[name]]
        lp = torch.log_softmax(lg, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        logp[name] = torch.where(target >= 0, lp, torch.zeros_like(lp))
        if name in masks:
            lg = lg.masked_fill(~masks[name].unsqueeze(1), MASK_VALUE)
        C = lg.shape[-1]
        u = uniform(keys.unsqueeze(1).expand(B, T), 0, steps.unsqueeze(0).expand(B, T), k)
        flat = sample_classes(lg.reshape(B * T, C), temperatures[:, k].repeat_interleave(T),
                              u.reshape(-1))
        predicted[name] = flat.view(B, T)
    # Beat from the predicted offset after the true previous time (teacher forcing).
    true_time = torch.cumsum(ticks[rows[..., V.OFFSET].clamp(min=0)], 1)
    prev_time = torch.cat([torch.zeros_like(true_time[:, :1]), true_time[:, :-1]], 1)
    beat = beat_of(prev_time + ticks[predicted["offset"]])
    note = predicted["duration"] > 0
    pitch = torch.where(note, predicted["pitch"], torch.full_like(beat, V.NONE))
    instr = torch.where(note, predicted["instrument"], torch.full_like(beat, V.NONE))
    out = torch.stack([predicted["offset"], beat, predicted["duration"], pitch, instr], -1)
    out = out.cpu().numpy().astype(V.ROW_DTYPE)
    lengths = lengths.cpu().numpy()
    return [out[b, : lengths[b]] for b in range(B)], logp
