"""Bar samples -> a padded Batch of tensors (model/batch.py's contract), vectorised.

The model receives tensors only; padding and the END-of-bar targets are built here, on the host
(in the loader's worker processes when it has them). Every array of a batch is built with one
numpy scatter - no Python loop per row - and the END target of each bar is a table lookup per
metre, so a batch of 64 bars costs a few hundred microseconds (bench/loader.py).

A *sample* is one bar, as numpy arrays in the compact layout of `mahler_dist.music.vocab`:

    context  int8  [Tc, 5]   rows of the previous bar (a piece's first bar: one START row, all -1)
    inputs   int8  [Ti, 5]   the bar's rows (Ti >= 1: an empty bar is one pause row)
    active   uint8 [Ti, 15]  bit-packed sounding pitch/instrument sets per input row
    metre    str (optional)  e.g. "4/4" (default 4/4): gives the bar's END target
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mahler_dist.model.batch import Batch
from mahler_dist.music import vocab
from mahler_dist.music.timing import CLASS_TICKS, Metre, allowed_classes, normalise_metre


def _field(sample: Any, name: str) -> np.ndarray:
    # a plain dict first: isinstance(x, Mapping) costs more than the rest of this function
    return np.asarray(sample[name] if type(sample) is dict or isinstance(sample, Mapping) else getattr(sample, name))


def _optional(sample: Any, name: str) -> Any:
    return sample.get(name) if type(sample) is dict or isinstance(sample, Mapping) else getattr(sample, name, None)


def pad_stack(arrays: Sequence[np.ndarray], lengths: np.ndarray, fill: int, dtype) -> np.ndarray:
    """[T_i, W] arrays -> [B, max T_i, W], padded with `fill`, in one scatter."""
    flat = np.concatenate(arrays)
    out = np.full((len(arrays), int(lengths.max()), flat.shape[-1]), fill, dtype=dtype)
    bar = np.repeat(np.arange(len(arrays)), lengths)
    row = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[bar, row] = flat
    return out


@lru_cache(maxsize=64)
def _metre(text: str | None) -> Metre:
    if not text:
        return Metre(4, 4)
    numerator, denominator = (int(x) for x in str(text).split("/"))
    return normalise_metre(numerator, denominator)


@lru_cache(maxsize=64)
def _end_table(metre: Metre) -> np.ndarray:
    """END class by the ticks left in the bar (0..bar_ticks): the shortest allowed class that
    reaches the bar end (music.rows.end_offset_class, as one lookup)."""
    allowed = allowed_classes(metre)
    left = np.arange(metre.bar_ticks + 1)
    table = np.full(len(left), allowed[-1], dtype=np.int64)
    for c in reversed(allowed):   # the first class in `allowed` order that reaches wins
        table[CLASS_TICKS[c] >= left] = c
    return table


def end_targets(inputs_flat: np.ndarray, lengths: np.ndarray, metres: Sequence[str | None]) -> np.ndarray:
    """The END-of-bar offset class of each bar, from its rows laid end to end."""
    rows = inputs_flat.astype(np.int64)
    timed = rows[:, vocab.DURATION] >= 0                           # START rows take no time
    ticks = np.where(timed, CLASS_TICKS[np.maximum(rows[:, vocab.OFFSET], 0)], 0)
    used = np.add.reduceat(ticks, np.cumsum(lengths) - lengths)
    out = np.empty(len(lengths), dtype=np.int64)
    keys = [m or "" for m in metres]
    for text in set(keys):
        pick = np.fromiter((k == text for k in keys), bool, len(keys))
        metre = _metre(text)
        left = np.clip(metre.bar_ticks - used[pick], 0, metre.bar_ticks)
        out[pick] = _end_table(metre)[left]
    return out


def collate_bars(samples: Sequence[Any]) -> Batch:
    """Pad a list of bar samples (dicts, or objects with those attributes such as
    `music.rows.BarSample`) into a Batch of CPU tensors; move it with `model.batch.to_device`."""
    if not samples:
        raise ValueError("collate_bars needs at least one sample")
    ctx = [_field(s, "context") for s in samples]
    inp = [_field(s, "inputs") for s in samples]
    act = [_field(s, "active") for s in samples]
    n = len(samples)
    ctx_len = np.fromiter(map(len, ctx), np.int64, n)
    inp_len = np.fromiter(map(len, inp), np.int64, n)
    act_len = np.fromiter(map(len, act), np.int64, n)
    bad = np.flatnonzero((ctx_len < 1) | (inp_len < 1) | (act_len != inp_len))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"sample {i}: needs >= 1 context row, >= 1 input row and one "
                         f"active-set row per input row (got {ctx_len[i]}, {inp_len[i]}, {act_len[i]})")
    for i, (c, x, a) in enumerate(zip(ctx, inp, act)):
        if c.shape[-1] != vocab.ROW_WIDTH or x.shape[-1] != vocab.ROW_WIDTH \
                or a.shape[-1] != vocab.ACTIVE_BYTES:
            raise ValueError(f"sample {i}: rows must be [T, {vocab.ROW_WIDTH}] and active sets "
                             f"[T, {vocab.ACTIVE_BYTES}]")
    inputs_flat = np.concatenate(inp)
    # int8 -> int64 on the host: torch indexing and one_hot want long indices
    return Batch(
        ctx_rows=torch.from_numpy(pad_stack(ctx, ctx_len, vocab.NONE, np.int64)),
        ctx_len=torch.from_numpy(ctx_len),
        inp_rows=torch.from_numpy(pad_stack(inp, inp_len, vocab.NONE, np.int64)),
        inp_len=torch.from_numpy(inp_len),
        inp_active=torch.from_numpy(pad_stack(act, inp_len, 0, np.uint8)),
        inp_end=torch.from_numpy(end_targets(inputs_flat, inp_len, [_optional(s, "metre") for s in samples])),
    )
