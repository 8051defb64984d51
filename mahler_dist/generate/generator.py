"""`Generator`: a trained MahlerNet behind a small array-in, rows-out API (no files, no Ray).

    gen = Generator.from_run(root, "myrun", checkpoint="best", device="cpu")
    bars = gen.sample(n_bars=8, n_samples=4, seed=1)               # [sample][bar] -> int8 rows [n, 5]
    rec = gen.reconstruct([bar_sample, ...], teacher_forcing=True)  # rows + accuracy/perplexity
    path = gen.interpolate(bar_a, bar_b, steps=5, slerp=True)       # S + 1 bars
    midi = rows_to_midi_bytes(bars[0], gen_metre)                   # generate.output

Every call decodes all of its samples in one batch; `sample_many` decodes a list of independent
requests (each with its own length, seed, temperatures, metre, context and z) together, which is
what a server batching concurrent requests needs. A request's result depends only on its own
fields (counter-based randomness, sampler.py), not on what it was batched with.

Contexts: "start" (the START row through the context encoder, the training-time context of a
piece's first bar; the default of every call and, since issue 11, of `mahler generate`), "zeros"
(an all-zero summary: the original's default, never seen in training, reference 9.20; only when
asked) or the rows of a bar. Encoding a bar uses the posterior mean (DESIGN.md 5; the
original sampled, 9.3). Bars chain: the next bar's context is the previous generated bar, and its
z is drawn from the prior (N(0, I), or p(z | context) when learned).

Decoding limits (`Decoding`, sampler.py): top-k / top-p and the per-onset polyphony bound, from
the run's `generate` config unless a call or request gives its own; they apply to every decoded
bar (sampling, free-running reconstruction, interpolation), not to teacher-forced predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from mahler_dist import storage
from mahler_dist.config import Config, config_from_dict, load_config
from mahler_dist.errors import MahlerError
from mahler_dist.generate.metrics import PROPERTIES, ReconStats
from mahler_dist.generate.output import parse_metre
from mahler_dist.generate.runs import local_checkpoint, resolve_checkpoint, run_dir
from mahler_dist.generate.sampler import (DecodedBars, Decoding, Temperatures, carry_from_rows, decode_bars,
                                          normal, sample_key, teacher_forced_rows)
from mahler_dist.model.checkpoint import load_checkpoint
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.music import vocab as V
from mahler_dist.music.timing import Metre

Context = Union[str, np.ndarray]          # "start" | "zeros" | int rows [T, 5]
_Z_COUNTER = 7                            # random-stream property slot for z draws


@dataclass
class SampleRequest:
    """One chain of `n_bars` generated bars. Randomness: sample_key(seed, index)."""

    n_bars: int
    seed: int = 0
    index: int = 0
    temperatures: Temperatures | None = None     # None: the generator's defaults
    metre: Metre | str | int | None = None       # None: 4/4
    context: Context = "start"                   # the first bar's context
    z: np.ndarray | None = None                  # the first bar's z (None: from the prior)
    context_metre: Metre | str | int | None = None   # the context bar's metre (None: `metre`)
    decoding: Decoding | None = None             # top-k/top-p/polyphony (None: the generator's)


@dataclass
class Reconstruction:
    rows: list[np.ndarray]                  # per bar: the reconstructed rows
    stats: ReconStats                       # accuracy (and log-probs with teacher forcing)
    logp: list[dict[str, float]] = field(default_factory=list)   # per bar (teacher forcing)


def _field(sample: Any, name: str, default: Any = None) -> Any:
    if isinstance(sample, Mapping):
        return sample.get(name, default)
    return getattr(sample, name, default)


def _pad(arrays: Sequence[np.ndarray], fill: int, width: int, dtype) -> torch.Tensor:
    longest = max(len(a) for a in arrays)
    out = np.full((len(arrays), longest, width), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return torch.from_numpy(out)


class Generator:
    def __init__(self, model: MahlerNet, config: Config, *, device: str | torch.device = "cpu",
                 temperatures: Temperatures | None = None, max_rows: int | None = None,
                 decoding: Decoding | None = None):
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.temperatures = temperatures or Temperatures.from_config(config.generate)
        self.decoding = decoding or Decoding.from_config(config.generate)
        self.max_rows = int(max_rows or config.data.max_rows_per_bar)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, root: str | Path, name: str, checkpoint: str = "best",
                 device: str | torch.device = "cpu") -> Generator:
        """Load ROOT/runs/NAME's checkpoint ("best", "latest" or a checkpoint folder name).
        The architecture comes from the checkpoint's config; the default temperatures and
        decoding limits from the run's config.yaml (edit them there, as the original's params.txt)."""
        run = run_dir(root, name)
        info = resolve_checkpoint(run, checkpoint)
        gen = cls.from_checkpoint(local_checkpoint(info), device=device)
        saved = storage.join(run, "config.yaml")
        if storage.exists(saved):
            run_cfg = load_config(saved).generate
            gen.temperatures = Temperatures.from_config(run_cfg)
            gen.decoding = Decoding.from_config(run_cfg)
        gen.checkpoint_name = info.name
        return gen

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> Generator:
        state = load_checkpoint(directory, map_location="cpu")
        if "model" not in state or "config" not in state:
            raise MahlerError(f"{directory}: checkpoint lacks 'model' or 'config'")
        config = config_from_dict(state["config"], f"{directory} (checkpoint config)")
        model = MahlerNet(config.model)
        weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise MahlerError(f"{directory}: the checkpoint's weights do not fit this code's model "
                              f"({str(e).splitlines()[0]} ...)") from None
        gen = cls(model, config, device=device)
        gen.checkpoint_name = Path(directory).name
        return gen

    @property
    def uses_context(self) -> bool:
        return self.model.ctx_encoder is not None

    @property
    def uses_vae(self) -> bool:
        return self.model.inp_encoder is not None

    def _temps(self, temps: Sequence[Temperatures | None]) -> torch.Tensor:
        return torch.tensor([(t or self.temperatures).as_list() for t in temps], dtype=torch.float32,
                            device=self.device)

    def _limits(self, decodings: Sequence[Decoding | None]) -> dict[str, torch.Tensor]:
        """decode_bars' top_k [B], top_p [B] and max_polyphony [B] (None: the defaults)."""
        ds = [d or self.decoding for d in decodings]
        return {"top_k": torch.tensor([d.top_k for d in ds], dtype=torch.int64, device=self.device),
                "top_p": torch.tensor([d.top_p for d in ds], dtype=torch.float32, device=self.device),
                "max_polyphony": torch.tensor([d.max_polyphony for d in ds], dtype=torch.int64,
                                              device=self.device)}

    def _keys(self, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        return torch.tensor([sample_key(s, i) for s, i in pairs], dtype=torch.int64, device=self.device)

    # -- building blocks (batched) ------------------------------------------------------------
    @torch.no_grad()
    def context_summary(self, contexts: Sequence[Context]) -> torch.Tensor | None:
        """Context summaries [B, 2E] ("zeros" rows are zero vectors); None without context."""
        if not self.uses_context:
            return None
        out = torch.zeros(len(contexts), 2 * self.config.model.enc_size, device=self.device)
        rows, where = [], []
        for i, c in enumerate(contexts):
            if isinstance(c, str):
                if c == "zeros":
                    continue
                if c != "start":
                    raise ValueError(f"context {c!r}: use 'start', 'zeros' or the rows of a bar")
                c = V.START_ROW[None, :]
            c = np.asarray(c)
            if c.ndim != 2 or c.shape[1] != V.ROW_WIDTH or len(c) == 0:
                raise ValueError(f"context rows must be [T >= 1, {V.ROW_WIDTH}], got {c.shape}")
            rows.append(c)
            where.append(i)
        if rows:
            padded = _pad(rows, V.NONE, V.ROW_WIDTH, np.int64).to(self.device)
            lengths = torch.tensor([len(r) for r in rows], device=self.device)
            out[where] = self.model.encode_context(padded, lengths).float()
        return out

    @torch.no_grad()
    def encode(self, bars: Sequence[np.ndarray], ctx: torch.Tensor | None) -> torch.Tensor:
        """Posterior means [B, Z] of bars (rows [T, 5]) under context summaries [B, 2E]."""
        if not self.uses_vae:
            raise MahlerError("this model has no VAE (model.use_vae: false): nothing to encode a bar into")
        padded = _pad([np.asarray(b) for b in bars], V.NONE, V.ROW_WIDTH, np.int64).to(self.device)
        lengths = torch.tensor([len(b) for b in bars], device=self.device)
        mu, _ = self.model.posterior(self.model.encode_input(padded, lengths), ctx)
        return mu

    @torch.no_grad()
    def prior_z(self, ctx: torch.Tensor | None, keys: torch.Tensor, bar_index: int) -> torch.Tensor | None:
        """z ~ p(z | ctx) [B, Z] from the samples' random streams (None without the VAE)."""
        if not self.uses_vae:
            return None
        mu, logvar = self.model.prior(ctx, batch=len(keys))
        eps = normal(keys, self.config.model.z_dim, bar_index, _Z_COUNTER)
        return mu + torch.exp(0.5 * logvar) * eps

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, ctx: torch.Tensor | None, metres: Sequence[Metre],
               temperatures: torch.Tensor, keys: torch.Tensor, bar_index: int = 0,
               carry: tuple[torch.Tensor, torch.Tensor] | None = None, *,
               limits: Mapping[str, torch.Tensor] | None = None) -> DecodedBars:
        """One bar per sample from (z, context summary): the batched core loop (sampler.py).
        `limits`: top_k/top_p/max_polyphony [B] (`_limits`); None: the generator's decoding."""
        state = self.model.init_decoder(z, ctx, batch=len(keys))
        p_end, i_end = carry if carry is not None else (None, None)
        limits = limits if limits is not None else self._limits([None] * len(keys))
        return decode_bars(self.model, state, metres, temperatures, keys, bar_index,
                           pitch_end=p_end, instr_end=i_end, max_rows=self.max_rows, **limits)

    def _carry(self, contexts: Sequence[Context], context_metres: Sequence[Metre]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The active sets carried into the decoded bars: the notes of each context bar still
        sounding at its end, measured with the CONTEXT bar's metre (its length and grid), which
        differs from the decoded bar's across a metre change."""
        p = np.zeros((len(contexts), V.NUM_PITCHES), dtype=np.int64)
        i = np.zeros((len(contexts), V.NUM_INSTRUMENTS), dtype=np.int64)
        for b, (c, m) in enumerate(zip(contexts, context_metres)):
            if not isinstance(c, str):
                p[b], i[b] = carry_from_rows(np.asarray(c), m)
        return torch.from_numpy(p).to(self.device), torch.from_numpy(i).to(self.device)

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_many(self, requests: Sequence[SampleRequest]) -> list[list[np.ndarray]]:
        """Decode independent chains together; returns rows per bar per request."""
        for r in requests:
            if r.n_bars < 1:
                raise ValueError(f"n_bars must be >= 1, got {r.n_bars}")
            if r.z is not None and np.asarray(r.z).shape != (self.config.model.z_dim,):
                raise ValueError(f"z must have shape ({self.config.model.z_dim},), "
                                 f"got {np.asarray(r.z).shape}")
        metres = [parse_metre(r.metre) for r in requests]
        contexts: list[Context] = [r.context for r in requests]
        keys = self._keys([(r.seed, r.index) for r in requests])
        temps = self._temps([r.temperatures for r in requests])
        limits = self._limits([r.decoding for r in requests])
        p_end, i_end = self._carry(contexts, [_context_metre(r.context_metre, m)
                                              for r, m in zip(requests, metres)])
        out: list[list[np.ndarray]] = [[] for _ in requests]
        for bar in range(max(r.n_bars for r in requests)):
            live = [k for k, r in enumerate(requests) if r.n_bars > bar]
            sel = torch.tensor(live, device=self.device)
            ctx = self.context_summary([contexts[k] for k in live])
            z = self.prior_z(ctx, keys[sel], bar)
            if bar == 0 and z is not None:
                for j, k in enumerate(live):
                    if requests[k].z is not None:
                        z[j] = torch.as_tensor(np.asarray(requests[k].z), dtype=z.dtype, device=self.device)
            decoded = self.decode(z, ctx, [metres[k] for k in live], temps[sel], keys[sel], bar,
                                  (p_end[sel], i_end[sel]), limits={k: v[sel] for k, v in limits.items()})
            bar_ticks = torch.tensor([metres[k].bar_ticks for k in live], device=self.device).unsqueeze(1)
            p_end[sel] = decoded.pitch_end - bar_ticks
            i_end[sel] = decoded.instr_end - bar_ticks
            for j, k in enumerate(live):
                out[k].append(decoded.rows[j])
                contexts[k] = decoded.rows[j]
        return out

    def sample(self, n_bars: int, n_samples: int = 1, seed: int = 0,
               temperatures: Temperatures | None = None, metre: Metre | str | int | None = None,
               context_rows: np.ndarray | None = None, z: np.ndarray | None = None,
               context: str = "start", context_metre: Metre | str | int | None = None,
               decoding: Decoding | None = None) -> list[list[np.ndarray]]:
        """`n_samples` chains of `n_bars` bars, decoded together. The first bar's context is
        `context_rows` (in `context_metre`, default `metre`) if given, else `context`: "start"
        (default, the training-time context of a first bar) or "zeros" (only when asked); its z
        is `z` if given. `decoding`: top-k/top-p/polyphony (None: the generator's)."""
        ctx: Context = context if context_rows is None else np.asarray(context_rows)
        return self.sample_many([SampleRequest(n_bars, seed, k, temperatures, metre, ctx, z, context_metre,
                                               decoding) for k in range(n_samples)])

    # -- reconstruction -----------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, bars: Sequence[Any], seed: int | Sequence[int] = 0,
                    temperatures: Temperatures | Sequence[Temperatures | None] | None = None,
                    teacher_forcing: bool = False, context: str | None = None,
                    metres: Sequence[Metre | str] | None = None, sample_index: int | Sequence[int] = 0,
                    decoding: Decoding | None = None) -> Reconstruction:
        """Reconstruct bars: objects or dicts with `inputs` (rows [T, 5]), `context` (rows, "start"
        or "zeros"), `active` (uint8 [T, 15], needed with teacher forcing), `metre` and
        `context_metre` (the context bar's metre; default: `metre`).
        `context` overrides every bar's context ("start" / "zeros": --no-ctx). z = posterior mean.
        `seed`, `sample_index` and `temperatures` are one for all bars or one per bar (so
        independent requests batch together); bar i uses the stream sample_key(seed_i, index_i).
        `decoding` (free-running only; None: the generator's): top-k/top-p/polyphony."""
        if not bars:
            return Reconstruction([], ReconStats())
        n = len(bars)
        inputs = [np.asarray(_field(b, "inputs")) for b in bars]
        contexts = [context if context is not None else _field(b, "context", "start") for b in bars]
        metres = [parse_metre(m) for m in (metres or [_field(b, "metre") for b in bars])]
        seeds = [seed] * n if isinstance(seed, int) else list(seed)
        indices = [sample_index] * n if isinstance(sample_index, int) else list(sample_index)
        temps_list = (list(temperatures) if isinstance(temperatures, (list, tuple)) else [temperatures] * n)
        if not len(seeds) == len(indices) == len(temps_list) == n:
            raise ValueError("seed, sample_index and temperatures must be single values or one per bar")
        keys = self._keys(list(zip(seeds, indices)))
        temps = self._temps(temps_list)
        ctx = self.context_summary(contexts)
        z = self.encode(inputs, ctx) if self.uses_vae else None
        stats = ReconStats()
        logp_rows: list[dict[str, float]] = []
        if teacher_forcing:
            actives = [_field(b, "active") for b in bars]
            if any(a is None for a in actives):
                raise ValueError("teacher forcing needs each bar's active sets ('active')")
            rows_t = _pad(inputs, V.NONE, V.ROW_WIDTH, np.int64).to(self.device)
            act_t = _pad([np.asarray(a) for a in actives], 0, V.ACTIVE_BYTES, np.uint8).to(self.device)
            lengths = torch.tensor([len(x) for x in inputs], device=self.device)
            state = self.model.init_decoder(z, ctx, batch=len(bars))
            logits = self.model.teacher_forced(rows_t, act_t, state)            # [B, T, C] each
            rows, logp = teacher_forced_rows(logits, rows_t, lengths, metres, temps, keys)
            sums = {k: v.sum(1).cpu().numpy() for k, v in logp.items()}
            for b in range(len(bars)):
                logp_rows.append({k: float(sums[k][b]) for k in PROPERTIES})
                for k in PROPERTIES:
                    stats.add_logp(k, sums[k][b])
        else:
            ctx_metres = [_context_metre(_field(b, "context_metre"), m) for b, m in zip(bars, metres)]
            decoded = self.decode(z, ctx, metres, temps, keys, 0, self._carry(contexts, ctx_metres),
                                  limits=self._limits([decoding] * n))
            rows = decoded.rows
            stats.capped += int(decoded.capped.sum())
        for pred, target, metre in zip(rows, inputs, metres):
            stats.add(pred, target, metre.bar_ticks)
        return Reconstruction(rows, stats, logp_rows)

    # -- interpolation and contexts -----------------------------------------------------------
    @torch.no_grad()
    def interpolate(self, a: Any, b: Any, steps: int, slerp: bool = False, context: Context | None = None,
                    seed: int = 0, temperatures: Temperatures | None = None,
                    metre: Metre | str | None = None, context_metre: Metre | str | None = None,
                    decoding: Decoding | None = None) -> list[np.ndarray]:
        """S + 1 bars decoded from z_a to z_b inclusive (z = posterior means of bars a and b,
        each a bar as in `reconstruct`, encoded under its own context). Decoding context:
        `context` if given, else the context summaries of a and b interpolated linearly with z,
        so the endpoints are exactly the reconstructions of a and b. Every point uses the random
        stream of sample 0 of `seed`, the one `reconstruct(seed=seed)` uses. The carried active
        sets use each context bar's own metre (`context_metre` for `context`, the bars'
        `context_metre` fields otherwise)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not self.uses_vae:
            raise MahlerError("intpol needs a model with a VAE (model.use_vae: true)")
        ctx_a, ctx_b = _field(a, "context", "start"), _field(b, "context", "start")
        metre = parse_metre(metre if metre is not None else _field(a, "metre"))
        summaries = self.context_summary([ctx_a, ctx_b])
        mus = self.encode([np.asarray(_field(a, "inputs")), np.asarray(_field(b, "inputs"))], summaries)
        ts = [j / steps for j in range(steps + 1)]
        z = torch.stack([_interp(mus[0], mus[1], t, slerp) for t in ts])
        if context is not None:
            shared = self.context_summary([context])
            ctx = None if shared is None else shared.expand(len(ts), -1)
            half = [context] * len(ts)
            half_metres = [_context_metre(context_metre, metre)] * len(ts)
        else:
            ctx = (None if summaries is None else
                   torch.stack([_interp(summaries[0], summaries[1], t, False) for t in ts]))
            half = [ctx_a if t <= 0.5 else ctx_b for t in ts]
            cm_a, cm_b = (_context_metre(_field(x, "context_metre"), parse_metre(_field(x, "metre", metre)))
                          for x in (a, b))
            half_metres = [cm_a if t <= 0.5 else cm_b for t in ts]
        n = len(ts)
        decoded = self.decode(z, ctx, [metre] * n, self._temps([temperatures] * n),
                              self._keys([(seed, 0)] * n), 0, self._carry(half, half_metres),
                              limits=self._limits([decoding] * n))
        return decoded.rows

    @torch.no_grad()
    def decode_under_contexts(self, contexts: Sequence[Context], z: np.ndarray | None = None,
                              n_bars: int = 1, n_samples: int = 1, seed: int = 0,
                              temperatures: Temperatures | None = None,
                              metre: Metre | str | None = None,
                              context_metres: Sequence[Metre | str | None] | None = None,
                              decoding: Decoding | None = None) -> list[list[list[np.ndarray]]]:
        """n_pred: for each of `n_samples` tries, one z (given, or one prior draw per try)
        decoded under every context; returns [try][context][bar] rows. With a learned prior the
        shared draw is the same noise eps under each context's p(z | c). `context_metres`: each
        context bar's metre (default: `metre`)."""
        if not contexts:
            raise ValueError("decode_under_contexts needs at least one context")
        metre = parse_metre(metre)
        requests = []
        for k in range(n_samples):
            summaries = self.context_summary(contexts)
            zs: list[np.ndarray | None] = [None] * len(contexts)
            if self.uses_vae:
                if z is not None:
                    zs = [np.asarray(z, dtype=np.float32)] * len(contexts)
                else:
                    key = self._keys([(seed, k)] * len(contexts))
                    zs = list(self.prior_z(summaries, key, 0).cpu().numpy())
            for c, zc, cm in zip(contexts, zs, context_metres or [None] * len(contexts)):
                requests.append(SampleRequest(n_bars, seed, k, temperatures, metre, c, zc, cm, decoding))
        flat = self.sample_many(requests)
        m = len(contexts)
        return [flat[k * m:(k + 1) * m] for k in range(n_samples)]


def _context_metre(given: Metre | str | int | None, bar_metre: Metre) -> Metre:
    """A context bar's metre: the one given, else (nothing else known) the decoded bar's."""
    return bar_metre if given is None else parse_metre(given)


def _interp(a: torch.Tensor, b: torch.Tensor, t: float, slerp: bool) -> torch.Tensor:
    """Linear or spherical interpolation; exact at t = 0 and 1; slerp falls back to linear when
    the angle is below 1.75e-5 rad (the original's threshold)."""
    if t <= 0.0:
        return a.clone()
    if t >= 1.0:
        return b.clone()
    if slerp:
        cos = torch.dot(a / a.norm().clamp(min=1e-12), b / b.norm().clamp(min=1e-12)).clamp(-1.0, 1.0)
        omega = float(torch.arccos(cos))
        if omega >= 1.75e-5:
            s = math.sin(omega)
            return (math.sin((1 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b
    return (1 - t) * a + t * b
