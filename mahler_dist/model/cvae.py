"""MahlerNet: the bar-by-bar conditional VAE (reference section 3), single-device PyTorch.

    ctx rows --ctx_encoder--> c [B, 2E]        (previous bar, or the START row)
    inp rows --inp_encoder--> x [B, 2E]
    [x, c]   --posterior----> mu, logvar [B, Z] -> z       (prior: N(0, I) or learned p(z | c))
    z        --z_proj-------> zp [B, D]  = initial h and c of every decoder layer
    step t:  [features of row t-1, c, zp] --decoder LSTM--> h_t [B, D]
             h_t -> offset -> duration -> pitch -> instrument   (heads.Heads)

Departures from the original, each a defect listed in reference 9: the log-variance is real
(not softplus'd, which forced the variance >= 1); `use_mean` gives the posterior mean for
reconstruction and interpolation; the learned prior makes it a true C-VAE (off by default).

Interface used by training (`forward`) and by the batched generator:

    c = model.encode_context(ctx_rows, ctx_len)              # None without context
    mu, logvar = model.posterior(model.encode_input(rows, lengths), c)
    mu, logvar = model.prior(c)                              # zeros: N(0, I)
    state = model.init_decoder(z, c)                         # z None without the VAE
    h, state = model.step(prev_rows, prev_active, state)     # prev row all -1 at step 0
    model.heads.offset_logits(h); model.heads.duration_logits(h, offset, beat); ...
    logits = model.teacher_forced(rows, active, state)       # whole bars fed the true rows
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mahler_dist.config import ModelConfig
from mahler_dist.model.batch import Batch
from mahler_dist.model.features import FeatureSpec
from mahler_dist.model.heads import Heads
from mahler_dist.model.layers import (BiLSTMEncoder, glorot_linear, normal_linear,
                                      tf_batch_norm, tf_lstm)


class ModelOutput(NamedTuple):
    """Teacher-forced outputs. A NamedTuple so DDP and torch.utils._pytree can see the tensors."""

    offset: torch.Tensor                       # [B, T, 60] float32 logits
    duration: torch.Tensor                     # [B, T, 60]
    pitch: torch.Tensor                        # [B, T, 96]
    instrument: torch.Tensor                   # [B, T, 23]
    mu: torch.Tensor | None = None             # [B, Z] posterior; None without the VAE
    logvar: torch.Tensor | None = None         # [B, Z]
    prior_mu: torch.Tensor | None = None       # [B, Z] learned prior; None = N(0, I)
    prior_logvar: torch.Tensor | None = None   # [B, Z]
    end: torch.Tensor | None = None            # [B, 60] offset logits one step after the last row


class DecoderState(NamedTuple):
    h: torch.Tensor                            # [L, B, D]
    c: torch.Tensor                            # [L, B, D]
    cond: torch.Tensor | None                  # [B, C] context summary and zp, fed every step


class Gaussian(nn.Module):
    """Linear maps to a mean and a real log-variance (N(0, init_std^2) weights as the original)."""

    def __init__(self, n_in: int, z_dim: int, std: float):
        super().__init__()
        self.mu = normal_linear(n_in, z_dim, std)
        self.logvar = normal_linear(n_in, z_dim, std)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(h).float(), self.logvar(h).float()


class LearnedPrior(nn.Module):
    """p(z | context summary): one tanh layer, then a Gaussian. Its near-zero output layers
    start it at N(0, I)."""

    def __init__(self, n_in: int, z_dim: int, std: float):
        super().__init__()
        self.hidden = nn.Sequential(glorot_linear(n_in, z_dim), nn.Tanh())
        self.gaussian = Gaussian(z_dim, z_dim, std)

    def forward(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gaussian(self.hidden(ctx))


class ZProjection(nn.Module):
    """zp = dropout(LeakyReLU_0.2(BN(Dense(z)))) (reference 3.4): one vector that is both the
    decoder's initial h and c (every layer) and its per-step z feed."""

    def __init__(self, z_dim: int, size: int, slope: float, dropout: float):
        super().__init__()
        self.net = nn.Sequential(glorot_linear(z_dim, size), tf_batch_norm(size),
                                 nn.LeakyReLU(slope), nn.Dropout(dropout))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MahlerNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.spec = spec = FeatureSpec.from_config(cfg)
        summary = 2 * cfg.enc_size
        enc = (cfg.enc_size, cfg.enc_layers, cfg.enc_dropout)
        self.ctx_encoder = BiLSTMEncoder(spec.context_width, *enc) if cfg.use_context else None
        self.inp_encoder = BiLSTMEncoder(spec.event_width, *enc) if cfg.use_vae else None
        post_in = summary * (1 + cfg.use_context)
        self.posterior_net = Gaussian(post_in, cfg.z_dim, cfg.init_std) if cfg.use_vae else None
        self.prior_net = (LearnedPrior(summary, cfg.z_dim, cfg.init_std)
                          if cfg.use_vae and cfg.learned_prior else None)
        self.z_proj = (ZProjection(cfg.z_dim, cfg.dec_size, cfg.leaky_relu_slope, cfg.vae_dropout)
                       if cfg.use_vae else None)
        self.cond_size = summary * cfg.use_context + cfg.dec_size * cfg.use_vae
        self.decoder = tf_lstm(spec.decoder_width + self.cond_size, cfg.dec_size, cfg.dec_layers,
                               cfg.dec_dropout)
        self.dec_dropout = nn.Dropout(cfg.dec_dropout)   # TF drops the top layer's output too
        # Without z the decoder starts from learned states (the original's init "var").
        self.dec_initial_state = (None if cfg.use_vae else
                                  nn.Parameter(torch.zeros(2, cfg.dec_layers, cfg.dec_size)))
        self.heads = Heads(cfg.dec_size, spec, cfg)

    @property
    def device(self) -> torch.device:
        return self.heads.linear["offset"].weight.device

    # -- encoders and latent ---------------------------------------------------------------
    def encode_context(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | None:
        """Context rows long [B, Tc, 5], lengths [B] -> summary [B, 2E] (None if off)."""
        if self.ctx_encoder is None:
            return None
        return self.ctx_encoder(self.spec.context(rows, lengths), lengths)

    def encode_input(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The bar's rows long [B, Ti, 5], lengths [B] -> summary [B, 2E] (needs the VAE)."""
        if self.inp_encoder is None:
            raise RuntimeError("encode_input needs model.use_vae: true")
        return self.inp_encoder(self.spec.events(rows), lengths)

    def posterior(self, inp: torch.Tensor, ctx: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | bar, context) -> (mu, logvar), each [B, Z]."""
        if self.posterior_net is None:
            raise RuntimeError("posterior needs model.use_vae: true")
        return self.posterior_net(inp if ctx is None else torch.cat([inp, ctx], dim=-1))

    def prior(self, ctx: torch.Tensor | None, batch: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z | context) -> (mu, logvar) [B, Z]; zeros (N(0, I)) unless the prior is learned.
        `batch` sizes the zeros when there is no context."""
        if self.prior_net is not None:
            return self.prior_net(ctx)
        n = ctx.shape[0] if ctx is not None else batch
        zeros = torch.zeros(n, self.cfg.z_dim, device=self.device)
        return zeros, zeros

    @staticmethod
    def sample_z(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample, one per bar."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    # -- decoder ---------------------------------------------------------------------------
    def init_decoder(self, z: torch.Tensor | None, ctx: torch.Tensor | None,
                     batch: int | None = None) -> DecoderState:
        """Initial decoder state from z [B, Z] and the context summary [B, 2E]."""
        cond = [ctx] if ctx is not None else []
        if self.z_proj is not None:
            if z is None:
                raise RuntimeError("a VAE model needs z to start the decoder")
            zp = self.z_proj(z)                                                     # [B, D]
            h = zp.unsqueeze(0).expand(self.cfg.dec_layers, -1, -1).contiguous()    # [L, B, D]
            state = DecoderState(h, h, None)
            cond.append(zp)
        else:
            n = ctx.shape[0] if ctx is not None else batch
            h0, c0 = self.dec_initial_state.unsqueeze(2).expand(-1, -1, n, -1)       # [L, B, D]
            state = DecoderState(h0.contiguous(), c0.contiguous(), None)
        return state._replace(cond=torch.cat(cond, dim=-1) if cond else None)

    def _run_decoder(self, x: torch.Tensor, state: DecoderState
                     ) -> tuple[torch.Tensor, DecoderState]:
        """x [B, T, decoder_width] -> h [B, T, D] (after output dropout), new state."""
        if state.cond is not None:
            x = torch.cat([x, state.cond.unsqueeze(1).expand(-1, x.shape[1], -1).to(x.dtype)], -1)
        out, (h, c) = self.decoder(x, (state.h, state.c))
        return self.dec_dropout(out), DecoderState(h, c, state.cond)

    def step(self, prev_rows: torch.Tensor, prev_active: torch.Tensor, state: DecoderState
             ) -> tuple[torch.Tensor, DecoderState]:
        """One generation step. prev_rows long [B, 5] (all -1 at step 0), prev_active uint8
        [B, 15] (zeros at step 0) -> h [B, D] for the heads, new state."""
        x = self.spec.decoder_step(prev_rows, prev_active).unsqueeze(1)     # [B, 1, F]
        out, state = self._run_decoder(x, state)
        return out[:, 0], state

    def teacher_forced(self, rows: torch.Tensor, active: torch.Tensor, state: DecoderState
                       ) -> dict[str, torch.Tensor]:
        """Decode whole bars fed the true rows: rows long [B, T, 5], active uint8 [B, T, 15],
        an initial state -> the four heads' logits [B, T, C] by property name."""
        x = self.spec.decoder_inputs(rows, active)                         # [B, T, F]
        h, _ = self._run_decoder(x, state)                                  # [B, T, D]
        return self.heads.teacher_forced(h, rows)

    # -- training --------------------------------------------------------------------------
    def forward(self, batch: Batch, use_mean: bool = False) -> ModelOutput:
        """Teacher-forced pass over a padded batch. z is sampled unless `use_mean`."""
        rows, lengths = batch["inp_rows"], batch["inp_len"]
        ctx = self.encode_context(batch["ctx_rows"], batch["ctx_len"])
        mu = logvar = prior_mu = prior_logvar = z = None
        if self.cfg.use_vae:
            mu, logvar = self.posterior(self.encode_input(rows, lengths), ctx)
            z = mu if use_mean else self.sample_z(mu, logvar)
            if self.prior_net is not None:
                prior_mu, prior_logvar = self.prior(ctx)
        state = self.init_decoder(z, ctx, batch=rows.shape[0])
        # One step more than the longest bar: step len_i, fed bar i's last row, predicts its END
        # offset (music.rows.end_offset_class); the other steps are ordinary teacher forcing.
        pad_row = rows.new_full((rows.shape[0], 1, rows.shape[2]), -1)
        pad_act = batch["inp_active"].new_zeros((rows.shape[0], 1, batch["inp_active"].shape[2]))
        x = self.spec.decoder_inputs(torch.cat([rows, pad_row], 1),
                                     torch.cat([batch["inp_active"], pad_act], 1))   # [B, T+1, F]
        hidden_prev = None
        if self.training and self.cfg.dec_input_dropout > 0:
            # step t's input is row t-1: a hidden step gets step 0's all-zero input
            hidden_prev = torch.rand(x.shape[:2], device=x.device) < self.cfg.dec_input_dropout   # [B, T+1]
            x = x.masked_fill(hidden_prev.unsqueeze(-1), 0.0)
            hidden_prev = hidden_prev[:, :-1]
        h, _ = self._run_decoder(x, state)                                          # [B, T+1, D]
        logits = self.heads.teacher_forced(h[:, :-1], rows, hidden_prev)
        h_end = h[torch.arange(rows.shape[0], device=h.device), lengths]           # [B, D]
        return ModelOutput(**logits, mu=mu, logvar=logvar, prior_mu=prior_mu, prior_logvar=prior_logvar,
                           end=self.heads.offset_logits(h_end))
