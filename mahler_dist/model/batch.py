"""The batch contract between the data loader and the model: the model receives tensors only.

Batches are built from bar samples by `mahler_dist.data.collate.collate_bars` (in the loader's
worker processes); the model never sees numpy or per-sample Python objects. A *batch* is a dict
of torch tensors, padded to the longest sample:

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

from typing import Mapping, TypedDict

import torch


BATCH_KEYS = ("ctx_rows", "ctx_len", "inp_rows", "inp_len", "inp_active", "inp_end")


class Batch(TypedDict):
    """See the module docstring for shapes and padding."""

    ctx_rows: torch.Tensor
    ctx_len: torch.Tensor
    inp_rows: torch.Tensor
    inp_len: torch.Tensor
    inp_active: torch.Tensor
    inp_end: torch.Tensor


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device | str,
              non_blocking: bool = False) -> Batch:
    """Move the batch tensors to `device` (extra keys are dropped)."""
    return Batch(**{k: batch[k].to(device, non_blocking=non_blocking) for k in BATCH_KEYS})


def count_events(batch: Mapping[str, torch.Tensor]) -> int:
    """Real (non-padding) input rows in the batch: the unit of the events/s figures."""
    return int(batch["inp_len"].sum())
