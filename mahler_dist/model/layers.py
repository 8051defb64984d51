"""Building blocks with the original's TensorFlow 1.13 semantics (reference 3.2-3.5, 9 item 7).

TF defaults that PyTorch does not share, and that these helpers restore:
- LSTMBlockCell: one bias per gate (PyTorch's LSTM has two, b_ih and b_hh), forget-gate bias +1,
  Glorot-uniform kernel over the stacked [input; state] -> 4H matrix;
- dense layers: Glorot-uniform kernel, zero bias (output and VAE layers: N(0, init_std^2));
- BatchNorm: momentum 0.99 (PyTorch's 0.01), epsilon 1e-3 (and, unlike both, a batch of one
  sample trains on the running statistics instead of failing).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FP32LSTM(nn.LSTM):
    """An LSTM that runs in fp32 (TF32 on a GPU that allows it) under autocast: autocast's
    cuDNN RNN path has cast RNNs to fp16 in some PyTorch versions, whatever dtype autocast was
    asked for, and an LSTM's recurrent state accumulates rounding over a bar's rows. The rest of
    the model (the linear layers and heads) still runs in bf16 under autocast.
    bench/gpu_check.py reports the dtype the LSTMs ran in."""

    def forward(self, x, hx=None):
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                hx = None if hx is None else tuple(h.float() for h in hx)
                return super().forward(x.float(), hx)
        return super().forward(x, hx)


def tf_lstm(input_size: int, hidden: int, layers: int, dropout: float) -> nn.LSTM:
    """A batch-first stacked LSTM with LSTMBlockCell's parameters.

    b_hh is zeroed and frozen: b_ih + b_hh only ever enter as a sum, so one trainable bias per
    gate is the same function class as TF's and the trainable parameter count matches the
    original exactly (reference 3: 23.0 M). `dropout` acts between layers; the caller drops
    the top layer's output when it is used.
    """
    lstm = FP32LSTM(input_size, hidden, layers, batch_first=True,
                    dropout=dropout if layers > 1 else 0.0)
    for layer in range(layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
        # TF's kernel is one [in + H, 4H] matrix: Glorot over those fans, shared by both halves.
        limit = math.sqrt(6.0 / (w_ih.shape[1] + hidden + 4 * hidden))
        with torch.no_grad():
            w_ih.uniform_(-limit, limit)
            w_hh.uniform_(-limit, limit)
            b_ih.zero_()
            b_ih[hidden: 2 * hidden] = 1.0   # PyTorch gate order i, f, g, o: forget bias +1
            b_hh.zero_()
        b_hh.requires_grad_(False)
    return lstm


def glorot_linear(n_in: int, n_out: int) -> nn.Linear:
    """tf.layers.dense defaults: Glorot-uniform kernel, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def normal_linear(n_in: int, n_out: int, std: float) -> nn.Linear:
    """The original's output and VAE layers: N(0, std^2) kernel, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


class SmallBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch with one value per channel (one bar).

    Batch statistics of a single sample are meaningless: its variance is 0, so TF would output
    beta alone (z would not reach the decoder) and PyTorch raises. The loader avoids one-bar
    batches where it can (data/loader.py), but some cannot be avoided (a rank with one sample, a
    bar too long to share the row budget), and none may crash a step. Such a batch is normalised
    with the running statistics, as in eval mode, and leaves them unchanged; gradients still
    reach gamma, beta and the layers before. With two or more values per channel this is exactly
    nn.BatchNorm1d (the original's maths). Chosen over a batch-free normalisation (LayerNorm)
    because that would change the model and its checkpoints, not just this corner.
    Under DDP the statistics are per rank (no SyncBatchNorm), as the original's per-GPU batch:
    a one-bar batch on one rank falls back on that rank alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values_per_channel = x.numel() // max(x.shape[1], 1)
        if self.training and values_per_channel == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        return super().forward(x)


def tf_batch_norm(features: int) -> nn.BatchNorm1d:
    """BatchNorm with TF's defaults: moving average 0.99 (= PyTorch momentum 0.01), eps 1e-3;
    safe on one-sample batches (SmallBatchNorm1d)."""
    return SmallBatchNorm1d(features, eps=1e-3, momentum=0.01)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its length, leaving the padding at the end.
    [B, T, F], [B] -> [B, T, F]."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)          # [1, T]
    last = (lengths - 1).unsqueeze(1)                                       # [B, 1]
    index = torch.where(steps <= last, last - steps, steps)                 # [B, T]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BiLSTMEncoder(nn.Module):
    """Bidirectional encoder of the "default" type (reference 3.2): one independent stacked LSTM
    per direction (layer 2 of each direction sees only its own layer 1, unlike PyTorch's
    bidirectional LSTM), learned initial states, summary = the final h of the top layer of both
    directions. Dropout on the top output would not reach the final state, so there is none."""

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.forward_lstm = tf_lstm(input_size, hidden, layers, dropout)
        self.backward_lstm = tf_lstm(input_size, hidden, layers, dropout)
        # [direction, (h, c), layer, H]: the original's 8 x 512 trainable vectors (2 layers).
        self.initial_state = nn.Parameter(torch.zeros(2, 2, layers, hidden))
        self.output_size = 2 * hidden

    def _initial(self, direction: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.initial_state[direction]                                 # [L, H] each
        return (h.unsqueeze(1).expand(-1, batch, -1).contiguous(),
                c.unsqueeze(1).expand(-1, batch, -1).contiguous())           # [L, B, H]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, T, F], lengths [B] (>= 1) -> summary [B, 2H]."""
        batch = x.shape[0]
        lengths = lengths.clamp(min=1)
        # Padding sits after the real steps, so the output at length-1 is the final state of the
        # real sequence: no packing needed, in either direction.
        out_f, _ = self.forward_lstm(x, self._initial(0, batch))                     # [B, T, H]
        out_b, _ = self.backward_lstm(reverse_padded(x, lengths), self._initial(1, batch))
        rows = torch.arange(batch, device=x.device)
        last = lengths - 1
        return torch.cat([out_f[rows, last], out_b[rows, last]], dim=-1)            # [B, 2H]
