"""Parameter counts per group and the text `mahler describe --config CONFIG` prints.

Counts are of *trainable* parameters, as the original's 23.0 M (reference 3); the frozen LSTM
second biases (layers.tf_lstm) are left out, so the figures compare one to one with TF's.
"""

from __future__ import annotations

import torch
from torch import nn

from mahler_dist.config import Config, ModelConfig
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.features import FeatureSpec

#: Report group -> the MahlerNet attributes it sums (reference 3's table, in its order).
GROUPS = {
    "context encoder": ("ctx_encoder",),
    "input encoder": ("inp_encoder",),
    "posterior (VAE)": ("posterior_net",),
    "learned prior": ("prior_net",),
    "z projection + BN": ("z_proj",),
    "decoder LSTM": ("decoder", "dec_initial_state"),
    "output heads": ("heads",),
}


def _count(obj: nn.Module | nn.Parameter | None) -> int:
    if obj is None:
        return 0
    params = [obj] if isinstance(obj, nn.Parameter) else obj.parameters()
    return sum(p.numel() for p in params if p.requires_grad)


def parameter_groups(model: MahlerNet) -> dict[str, int]:
    """Trainable parameters per group (absent parts count 0) and "total"."""
    counts = {group: sum(_count(getattr(model, a)) for a in attrs) for group, attrs in GROUPS.items()}
    counts["total"] = _count(model)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total"), \
        "a MahlerNet submodule is missing from summary.GROUPS"
    return counts


def build_meta_model(cfg: ModelConfig) -> MahlerNet:
    """The model on the meta device: shapes and counts without allocating or initialising."""
    with torch.device("meta"):
        return MahlerNet(cfg)


def _architecture(cfg: ModelConfig) -> list[str]:
    spec = FeatureSpec.from_config(cfg)
    enc = f"bidirectional {cfg.enc_layers} x {cfg.enc_size} LSTM (one stack per direction)"
    summary = 2 * cfg.enc_size
    cond = summary * cfg.use_context + cfg.dec_size * cfg.use_vae
    lines = [
        f"  features: beats {'on' if cfg.use_beats else 'off'}, active pitches "
        f"{'on' if cfg.use_active_pitches else 'off'}, active instruments "
        f"{'on' if cfg.use_active_instruments else 'off'}",
        f"  context encoder: {enc + f' over {spec.context_width} inputs' if cfg.use_context else 'off'}",
        f"  input encoder:   {enc + f' over {spec.event_width} inputs' if cfg.use_vae else 'off (no VAE)'}",
    ]
    if cfg.use_vae:
        prior = "learned p(z | context)" if cfg.learned_prior else "N(0, I)"
        lines.append(f"  latent: z {cfg.z_dim} from {summary * (1 + cfg.use_context)} summary "
                     f"inputs; prior {prior}; z projection {cfg.dec_size} (BN, LeakyReLU "
                     f"{cfg.leaky_relu_slope}) = decoder initial state")
    lines += [
        f"  decoder: {cfg.dec_layers} x {cfg.dec_size} LSTM, step input "
        f"{spec.decoder_width} + {cond} = {spec.decoder_width + cond}",
        f"  heads: offset -> duration{' (next-step reduction)' * cfg.duration_next_step_reduction}"
        f" -> pitch{' (same-step reduction)' * cfg.pitch_same_step_reduction} -> instrument"
        f"{'; BN on logits (compat)' if cfg.logits_batch_norm else ''}",
        f"  dropout: encoders {cfg.enc_dropout}, z {cfg.vae_dropout}, decoder {cfg.dec_dropout}",
    ]
    return lines


def describe_text(config: Config) -> str:
    """The resolved architecture, parameters per group and the total."""
    m, t, lo = config.model, config.train, config.loss
    counts = parameter_groups(build_meta_model(m))
    width = max(len(k) for k in counts)
    table = [f"  {k:<{width}}  {v:>12,}  {v / 1e6:7.2f} M" for k, v in counts.items()
             if k != "total" and v]
    total = counts["total"]
    clip = (f"value +-{t.grad_clip_value}" if t.grad_clip_value else "") + \
           (f" norm {t.grad_clip_norm}" if t.grad_clip_norm else "")
    return "\n".join([
        "architecture:", *_architecture(m),
        "parameters (trainable):", *table,
        f"  {'total':<{width}}  {total:>12,}  {total / 1e6:7.2f} M",
        f"training: {t.optimizer} lr {t.lr}, batch {t.batch_size}, {t.epochs} epochs, "
        f"clip {clip.strip() or 'off'}, weight decay {t.weight_decay}",
        f"loss: KL {lo.kl_reduction} over dims, free bits {lo.free_bits}, beta "
        + (f"annealed to {lo.beta_max} (rate {lo.beta_rate})" if lo.beta_annealing else "1"),
        *_quantiser(config.data.quantize),
    ]) + "\n"


def _quantiser(q) -> list[str]:
    """The data.quantize switches, on and off (music/quantize_options.py documents each)."""
    from mahler_dist.music.quantize_options import SWITCHES

    on = [n for n in SWITCHES if q.is_on(n)]
    off = [n for n in SWITCHES if not q.is_on(n)]
    return ["quantiser (data.quantize): on: " + ", ".join(on), "  off: " + (", ".join(off) or "none")]
