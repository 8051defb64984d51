"""Typed configuration: one dataclass tree with defaults, loaded from YAML and validated.

Unlike the original (which merged only known keys and silently ignored the rest, reference 6.4),
an unknown key, a mistyped value or a bad choice is an error that names the key, the file, the
expected type and the valid keys. All problems in a file are reported together.
Every field is documented where it is declared; `mahler describe` prints the resolved tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal


from mahler_dist import storage
from mahler_dist.errors import ConfigError
from mahler_dist.music.quantize_options import QuantizeOptions


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Preprocessing: MIDI -> rows -> shards."""

    shard_samples: int = 4096
    """Bar samples per WebDataset shard (a target; the last shard of a split may be smaller)."""
    val_fraction: float = 0.05
    """Fraction of pieces (not bars) in the validation split, chosen by content hash."""
    test_fraction: float = 0.05
    """Fraction of pieces in the test split."""
    max_rows_per_bar: int = 256
    """Bars with more event rows than this are dropped from training (counted in the manifest)."""
    split_seed: int = 0
    """Salt for the content-hash split; change it to draw another split."""
    max_file_bytes: int = 16 << 20
    """Files larger than this are rejected unread (the largest real corpus file: 0.4 MB)."""
    max_notes: int = 500_000
    """Files with more notes are rejected before quantisation (the real corpora: at most 45,736)."""
    max_bars: int = 20_000
    """Files whose metre map allows more bars are rejected before quantisation (the real corpora:
    at most 1,734; sample keys hold 5 digits, so at most 99,999)."""
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    """The quantiser's heuristics: a switch each, and their thresholds (music/quantize_options.py)."""


#: The DataConfig fields that bound the work one input file may cost (each must be > 0).
DATA_LIMITS = ("max_file_bytes", "max_notes", "max_bars")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """The C-VAE architecture (reference section 3). Defaults = the original's example config."""

    use_context: bool = True
    """Encode the previous bar and feed its summary to the posterior and the decoder."""
    use_vae: bool = True
    """Encode the bar itself into a latent z (off: a conditional language model of bars)."""
    use_beats: bool = True
    """Feed the beat-position feature."""
    use_active_pitches: bool = True
    """Feed the set of sounding pitches to the decoder."""
    use_active_instruments: bool = True
    """Feed the set of sounding instruments to the decoder."""
    enc_layers: int = 2
    """Layers of each bidirectional encoder LSTM."""
    enc_size: int = 512
    """State size of each encoder direction."""
    enc_dropout: float = 0.35
    """Dropout on every encoder layer's output."""
    z_dim: int = 256
    """Latent size."""
    vae_dropout: float = 0.35
    """Dropout on the projected z."""
    dec_layers: int = 2
    """Decoder LSTM layers."""
    dec_size: int = 512
    """Decoder state size (also the size of the projected z)."""
    dec_dropout: float = 0.35
    """Dropout on every decoder layer's output."""
    duration_next_step_reduction: bool = True
    """After offset class 0 the duration cannot be class 0 (a pause must advance time)."""
    pitch_same_step_reduction: bool = False
    """After offset class 0, pitches below the previous row's pitch are masked (chords ascend)."""
    relative_pitch: bool = False
    """Add to each pitch's logit a logit of its interval from the previous row's pitch (one
    learned score per interval, -95..+95, from the same inputs), so what the model learns about
    steps and leaps holds in every key and register at once; absolute logits alone must learn each
    of the 96 x 96 pitch pairs separately. Off in the original."""
    dec_input_dropout: float = 0.0
    """Training only: the probability that a decoder step's input (the previous row and the
    sounding sets) is replaced by the empty input of step 0, and the pitch head's interval term
    loses its previous pitch at that step (word dropout, Bowman et al. 2016). In generation the
    previous row is the model's own sample; a decoder that never trained without the true one
    copies it and drifts once it errs, and has less reason to read z. Off in the original."""
    learned_prior: bool = False
    """Learn p(z | context) instead of N(0, I): a true conditional VAE (the original was not)."""
    logits_batch_norm: bool = False
    """compat: BatchNorm on the output logits, as the original (reference 9, item 5)."""
    leaky_relu_slope: float = 0.2
    """TF's LeakyReLU default, used by the original for the z projection."""
    init_std: float = 0.001
    """Std of the normal init of output and VAE weights (the original's N(0, 0.001^2))."""


@dataclass(kw_only=True, slots=True)
class LossConfig:
    """Losses (reference section 4)."""

    kl_reduction: Literal["sum", "mean"] = "sum"
    """Sum the KL over latent dims ("mean" = compat with the original's 1/z_dim scale)."""
    free_bits: float = 0.0
    """Free bits per bar (in bits; max(KL - free_bits * ln 2, 0) per bar, before the batch mean)."""
    beta_annealing: bool = False
    """beta(step) = beta_max * (1 - beta_rate ** step) instead of 1."""
    beta_max: float = 0.2
    """The KL weight that annealing approaches."""
    beta_rate: float = 0.999
    """Per-step decay of the gap to beta_max, in (0, 1)."""


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Optimisation and the training loop."""

    epochs: int = 50
    """Passes over the training split."""
    batch_size: int = 256
    """Bars per global batch (all ranks together)."""
    max_batch_rows: int = 16_384
    """Row budget per rank (one device's batch): bars x (longest context + longest input), padded,
    at most this; it bounds a step's memory. >= 2 x data.max_rows_per_bar (one bar must fit).
    16,384 = 256 bars x 64 rows: piano-midi.de bars with their contexts have 28 rows at the median
    and 55 at the 90th percentile, so length-sorted batches stay full for most bars."""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """rmsprop: TF1 semantics as the original (rho 0.9, eps 1e-10 inside the sqrt, accumulator
    starting at 1); adam: PyTorch's (= TF's) defaults."""
    lr: float = 0.001
    """Peak learning rate."""
    weight_decay: float = 0.0
    """L2 on weight matrices (not biases, BN or initial states): the original's
    `loss.regularization`, whose reg * ||w||^2 / 2 term equals this coupled weight decay."""
    grad_clip_value: float = 1.0
    """Clip each gradient element to +-value (the original); 0 disables."""
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm (after value clipping); 0 disables."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant (the original), or cosine decay to 10% of lr over the run after the warmup."""
    warmup_steps: int = 0
    """Linear learning-rate warmup over this many steps."""
    seed: int = 12345
    """Seeds the initial weights, dropout and the data order (the original's fixed seed)."""
    keep_checkpoints: int = 3
    """Best checkpoints kept by validation loss (the latest is always kept too)."""
    checkpoint_every_steps: int = 1000
    """Also checkpoint every this many steps inside an epoch (with the loader's position, so a
    restarted worker or a rerun resumes at the next batch, not at the epoch's start); 0: only at
    epoch ends. Such checkpoints have no validation score: they are kept as the latest, never
    chosen as the best."""
    log_every_steps: int = 20
    """Steps between metric reports."""
    free_eval_every_epochs: int = 2
    """Every this many epochs (and at the last), rank 0 reconstructs `free_eval_bars` validation
    bars free-running (the model decodes from its own rows) and logs note/onset F1 and step-aligned
    accuracy as val_free_* (`mahler evaluate` measures the whole split); 0: never."""
    free_eval_bars: int = 64
    """Validation bars of that evaluation (the first ones of the split, the same every time)."""
    shuffle_window: int = 4096
    """Samples sorted by length together when bucketing batches."""
    transpose_semitones: int = 0
    """Pitch augmentation: each training bar and its context move by a random interval in
    [-n, +n] semitones (kept inside the vocabulary; drawn per seed, epoch and bar); 0 = off."""
    loader_workers: int = 0
    """Processes building batches beside each training worker (torch DataLoader workers; the
    batches are the same with any count). Give a GPU worker CPUs for them (--cpus-per-worker)."""
    prefetch_batches: int = 4
    """Batches each loader process builds ahead of the step."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast on a GPU, fp32 on a CPU. The LSTMs run in fp32/TF32 under autocast
    either way (model/layers.py): autocast's cuDNN RNN path has cast them to fp16 in some
    PyTorch versions."""
    max_nonfinite_steps: int = 20
    """A step whose loss or gradient is not finite is skipped (the weights and optimiser state
    stay as they were) and counted; this many in a row stop the run with an error."""


@dataclass(kw_only=True, slots=True)
class GenerateConfig:
    """Sampling defaults (per-property temperatures, reference 6.4 `generation_temperature`) and
    the decoding limits that keep argmax / low-temperature decoding from degenerating (issue 11)."""

    offset_temperature: float = 1.0
    duration_temperature: float = 1.0
    pitch_temperature: float = 1.0
    instrument_temperature: float = 1.0
    top_p: float = 1.0
    """Nucleus sampling, every property: only the likeliest classes holding this much of the
    model's probability can be drawn (END counts as one offset event); in (0, 1], 1 = off."""
    top_k: int = 0
    """Only the k likeliest classes of each property can be drawn; 0 = off (1 = argmax)."""
    max_polyphony: int = 12
    """Notes at one onset: after this many, "same onset" (offset class 0) is masked, and a
    (pitch, instrument) already started at the onset is never repeated; 0 = neither. 12: the
    most notes at one onset in piano-midi.de, and 16 onsets x 12 rows stay under the 256-row
    cap. Orchestral corpora have 3-6% of onsets above 12: raise it for them (24 keeps 99.6%)."""


@dataclass(kw_only=True, slots=True)
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml   # imported where YAML is read or written: the model runs without PyYAML

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """A short stable hash of the resolved configuration."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            errors.append(f"{where}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], where, errors)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return value
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, where: str, errors: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where or 'top level'}: expected a mapping of keys, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            errors.append(f"unknown key '{path}'; valid keys here: {', '.join(fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, errors)
        else:
            kwargs[key] = _check_value(value, tp, path, errors)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None, source: str = "<config>") -> Config:
    """Build and validate a Config from a nested dict; raise ConfigError listing every problem."""
    errors: list[str] = []
    config = _build(Config, data, "", errors)
    errors += _semantic_errors(config) if not errors else []
    if errors:
        listing = "\n  - ".join(errors)
        raise ConfigError(f"invalid configuration in {source}:\n  - {listing}")
    return config


def _semantic_errors(c: Config) -> list[str]:
    m, lo, t = c.model, c.loss, c.train
    errors = []
    positive = {"model.enc_layers": m.enc_layers, "model.enc_size": m.enc_size,
                "model.z_dim": m.z_dim, "model.dec_layers": m.dec_layers,
                "model.dec_size": m.dec_size, "model.init_std": m.init_std,
                "train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.lr": t.lr,
                "train.log_every_steps": t.log_every_steps, "train.shuffle_window": t.shuffle_window,
                "data.shard_samples": c.data.shard_samples,
                "data.max_rows_per_bar": c.data.max_rows_per_bar,
                "train.prefetch_batches": t.prefetch_batches, "train.max_nonfinite_steps": t.max_nonfinite_steps}
    errors += [f"{k}: must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    non_negative = {"model.leaky_relu_slope": m.leaky_relu_slope, "loss.free_bits": lo.free_bits,
                    "loss.beta_max": lo.beta_max, "train.weight_decay": t.weight_decay,
                    "train.grad_clip_value": t.grad_clip_value,
                    "train.grad_clip_norm": t.grad_clip_norm, "train.warmup_steps": t.warmup_steps,
                    "train.keep_checkpoints": t.keep_checkpoints,
                    "train.checkpoint_every_steps": t.checkpoint_every_steps,
                    "train.free_eval_every_epochs": t.free_eval_every_epochs,
                    "train.free_eval_bars": t.free_eval_bars,
                    "train.transpose_semitones": t.transpose_semitones,
                    "train.loader_workers": t.loader_workers}
    errors += [f"{k}: must be >= 0, got {v}" for k, v in non_negative.items() if v < 0]
    q = c.data.quantize
    errors += [f"data.quantize.{k}: must be >= 0, got {getattr(q, k)}"
               for k in ("cluster_window", "grace_window", "legato_max_gap", "max_instruments", "slow_bpm", "fast_bpm",
                         "fine_tolerance_beats", "fast_gap_beats")
               if getattr(q, k) < 0]
    errors += [f"data.quantize.{k}: must be in [0, 1], got {getattr(q, k)}"
               for k in ("legato_fraction", "overlap_fraction", "max_unquantisable_fraction")
               if not 0.0 <= getattr(q, k) <= 1.0]
    if t.max_batch_rows < 2 * c.data.max_rows_per_bar:
        errors.append(f"train.max_batch_rows: must be >= 2 x data.max_rows_per_bar = {2 * c.data.max_rows_per_bar} "
                      f"(a bar and its context must fit a batch), got {t.max_batch_rows}")
    for k in ("enc_dropout", "vae_dropout", "dec_dropout", "dec_input_dropout"):
        if not 0.0 <= getattr(m, k) < 1.0:
            errors.append(f"model.{k}: must be in [0, 1), got {getattr(m, k)}")
    if lo.beta_annealing and not 0.0 < lo.beta_rate < 1.0:
        errors.append(f"loss.beta_rate: must be in (0, 1) with beta_annealing, got {lo.beta_rate}")
    if not 0 <= c.data.val_fraction + c.data.test_fraction < 1:
        errors.append("data.val_fraction + data.test_fraction must be in [0, 1)")
    errors += [f"data.{k}: must be > 0, got {getattr(c.data, k)}" for k in DATA_LIMITS if getattr(c.data, k) <= 0]
    if c.data.max_bars > 99_999:
        errors.append(f"data.max_bars: at most 99999 (sample keys hold 5 digits), got {c.data.max_bars}")
    if m.learned_prior and not (m.use_vae and m.use_context):
        errors.append("model.learned_prior: a prior conditioned on the context needs "
                      "model.use_vae: true and model.use_context: true")
    for k in ("offset", "duration", "pitch", "instrument"):
        if getattr(c.generate, f"{k}_temperature") < 0:
            errors.append(f"generate.{k}_temperature: must be >= 0 (0 = argmax)")
    if not 0.0 < c.generate.top_p <= 1.0:
        errors.append(f"generate.top_p: must be in (0, 1] (1 = off), got {c.generate.top_p}")
    for k in ("top_k", "max_polyphony"):
        if getattr(c.generate, k) < 0:
            errors.append(f"generate.{k}: must be >= 0 (0 = off), got {getattr(c.generate, k)}")
    return errors


def load_config(path: str | Path | None) -> Config:
    """Load a YAML config file (None: the defaults). Errors name the file."""
    if path is None:
        return Config()
    path = path if storage.is_uri(path) else Path(path)
    try:
        text = storage.read_bytes(path).decode()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return config_from_dict(data, str(path))


def save_config(config: Config, path: str | Path) -> None:
    storage.write_bytes(path, config.to_yaml().encode())


def _presets_dir() -> Path:
    """configs/ at the repository root ships as the package mahler_dist.configs (pyproject.toml
    maps it), so a plain `pip install .` carries the presets. It is a regular package on disk, so
    files() is a real directory. A checkout imported without being installed (PYTHONPATH=., or a
    Ray job's working_dir shadowing the installed package) has no such package: its presets are
    the checkout's own configs/."""
    try:
        return Path(resources.files("mahler_dist.configs"))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


#: The shipped presets (see _presets_dir).
PRESETS_DIR = _presets_dir()
#: Files in configs/ that are not training presets: Ray Serve's deploy config of the generation app.
NOT_PRESETS = frozenset({"serve.yaml"})


def preset_paths() -> list[Path]:
    """The training presets (tiny, small, mahlernet, ...), without the other configs beside them."""
    return sorted(p for p in PRESETS_DIR.glob("*.yaml") if p.name not in NOT_PRESETS)


def resolve_config_path(name_or_path: str | Path | None) -> Path | None:
    """A preset name ("tiny", "small", "mahlernet") or a path to a YAML file."""
    if name_or_path is None:
        return None
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.exists() and preset.name not in NOT_PRESETS:
        return preset
    available = ", ".join(p.stem for p in preset_paths())
    raise ConfigError(f"no config file or preset named '{name_or_path}' (presets: {available})")
