"""The batch contract between the data loader and the model, and a pure-torch collate.

A *sample* is one bar, as numpy arrays in the compact layout of `mahler_dist.music.vocab`:

    context  int8  [Tc, 5]   rows of the previous bar (a piece's first bar: one START row, all -1)
    inputs   int8  [Ti, 5]   the bar's rows (Ti >= 1: an empty bar is one pause row)
    active   uint8 [Ti, 15]  bit-packed sounding pitch/instrument sets per input row
    metre    str (optional)  e.g. "4/4" (default 4/4): gives the bar's END target

A *batch* is a dict of torch tensors, padded to the longest sample:

    ctx_rows   long  [B, Tc_max, 5]  padding -1
    ctx_len    long  [B]
    inp_rows   long  [B, Ti_max, 5]  padding -1
    inp_len    long  [B]
    inp_active uint8 [B, Ti_max, 15] padding 0
    inp_end    long  [B]             END-of-bar offset target (music.rows.end_offset_class)

Rows stay compact on the host and on the wire; the model expands them to one-hots on its own
device (DESIGN.md section 5). Padding rows are all -1, so they expand to all-zero features, and
every loss term masks them out by length.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np
import torch

from mahler_dist.music import vocab
from mahler_dist.music.rows import end_offset_class
from mahler_dist.music.timing import Metre, normalise_metre

BATCH_KEYS = ("ctx_rows", "ctx_len", "inp_rows", "inp_len", "inp_active", "inp_end")


class Batch(TypedDict):
    """See the module docstring for shapes and padding."""

    ctx_rows: torch.Tensor
    ctx_len: torch.Tensor
    inp_rows: torch.Tensor
    inp_len: torch.Tensor
    inp_active: torch.Tensor
    inp_end: torch.Tensor


def _pad(arrays: Sequence[np.ndarray], fill: int, dtype: np.dtype) -> np.ndarray:
    """Stack [T_i, W] arrays into [B, T_max, W], padding with `fill`."""
    longest = max(len(a) for a in arrays)
    out = np.full((len(arrays), longest, arrays[0].shape[-1]), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def _field(sample: Any, name: str) -> np.ndarray:
    return np.asarray(sample[name] if isinstance(sample, Mapping) else getattr(sample, name))


def collate_bars(samples: Sequence[Any]) -> Batch:
    """Pad a list of bar samples (dicts, or objects with those attributes such as
    `music.rows.BarSample`) into a Batch of CPU tensors; move it with `to_device`."""
    if not samples:
        raise ValueError("collate_bars needs at least one sample")
    ctx = [_field(s, "context") for s in samples]
    inp = [_field(s, "inputs") for s in samples]
    act = [_field(s, "active") for s in samples]
    for i, (c, x, a) in enumerate(zip(ctx, inp, act)):
        if len(c) < 1 or len(x) < 1 or len(a) != len(x):
            raise ValueError(f"sample {i}: needs >= 1 context row, >= 1 input row and one "
                             f"active-set row per input row (got {len(c)}, {len(x)}, {len(a)})")
        if c.shape[-1] != vocab.ROW_WIDTH or x.shape[-1] != vocab.ROW_WIDTH \
                or a.shape[-1] != vocab.ACTIVE_BYTES:
            raise ValueError(f"sample {i}: rows must be [T, {vocab.ROW_WIDTH}] and active sets "
                             f"[T, {vocab.ACTIVE_BYTES}]")
    # int8 -> int64 on the host: torch indexing and one_hot want long indices.
    return Batch(
        ctx_rows=torch.from_numpy(_pad(ctx, vocab.NONE, np.int64)),
        ctx_len=torch.tensor([len(c) for c in ctx], dtype=torch.long),
        inp_rows=torch.from_numpy(_pad(inp, vocab.NONE, np.int64)),
        inp_len=torch.tensor([len(x) for x in inp], dtype=torch.long),
        inp_active=torch.from_numpy(_pad(act, 0, np.uint8)),
        inp_end=torch.tensor([end_offset_class(x, _metre(_optional(s, "metre"))) for s, x in zip(samples, inp)],
                             dtype=torch.long),
    )


def _optional(sample: Any, name: str) -> Any:
    return sample.get(name) if isinstance(sample, Mapping) else getattr(sample, name, None)


@lru_cache(maxsize=64)
def _metre(text: str | None) -> Metre:
    if not text:
        return Metre(4, 4)
    numerator, denominator = (int(x) for x in str(text).split("/"))
    return normalise_metre(numerator, denominator)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device | str,
              non_blocking: bool = False) -> Batch:
    """Move the batch tensors to `device` (extra keys are dropped)."""
    return Batch(**{k: batch[k].to(device, non_blocking=non_blocking) for k in BATCH_KEYS})


def count_events(batch: Mapping[str, torch.Tensor]) -> int:
    """Real (non-padding) input rows in the batch: the unit of the events/s figures."""
    return int(batch["inp_len"].sum())
