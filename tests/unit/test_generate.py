"""Generation end to end on a tiny model memorised inside the test (plain PyTorch, no Ray).

The model learns 8 real bars (examples/midi/scn15_11.mid) with the standard loss, which includes
where each bar ends (the END offset after the last row). The run directory is what Ray Train
leaves (config.yaml, checkpoint_epochNNNN/{state.pt, metrics.json}) plus ROOT/pieces, a manifest
and an index with a write-back table, so the CLI runs exactly as on a real ROOT.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

from mahler_dist.cli import main
from mahler_dist.config import load_config, resolve_config_path, save_config
from mahler_dist.data.shards import save_piece
from mahler_dist.errors import MahlerError
from mahler_dist.generate import Generator, SampleRequest, Temperatures, parse_metre, rows_to_midi_bytes
from mahler_dist.generate.runs import resolve_checkpoint, run_dir
from mahler_dist.generate.sampler import end_classes, metre_tables
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.checkpoint import save_checkpoint
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.optim import build_optimizer
from tiny_runs import fit_step
from mahler_dist.music.encode import encode_bytes, encode_file
from mahler_dist.music.timing import CLASS_TICKS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "midi" / "scn15_11.mid"
PIECE = "00c0ffee00c0ffee"
N_BARS = 8
MAX_STEPS = 600
ARGMAX = Temperatures.argmax()


def _end_targets(batch, metres):
    tables = metre_tables(metres, "cpu")
    rows, lengths = batch["inp_rows"], batch["inp_len"]
    real = torch.arange(rows.shape[1]) < lengths[:, None]
    last = (torch.as_tensor(CLASS_TICKS)[rows[..., 0].clamp(min=0)] * real).sum(1)
    return end_classes(last, tables.bar_ticks, tables.offset_ok)


def _memorised(gen, samples) -> bool:
    return all(gen.reconstruct(samples, temperatures=ARGMAX, teacher_forcing=tf).stats.exact_bars
               == len(samples) for tf in (True, False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    enc = encode_file(EXAMPLE)
    samples = enc.samples[:N_BARS]
    cfg = load_config(resolve_config_path("tiny"))
    cfg.loss.free_bits = 16.0
    cfg.train.lr = 0.01
    cfg.generate.pitch_temperature = 0.9
    cfg.data.max_rows_per_bar = 40      # the row cap: unseen bars of a memorising model may not end
    torch.manual_seed(0)
    model = MahlerNet(cfg.model)
    untrained = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg.train)
    batch = collate_bars(samples)
    # the END target the model trains on (music.rows) is the one the sampler stops at
    assert batch["inp_end"].tolist() == _end_targets(batch, [parse_metre(s.metre) for s in samples]).tolist()
    for step in range(1, MAX_STEPS + 1):
        fit_step(model, batch, optimizer, cfg, step)
        if step >= 150 and step % 25 == 0 and _memorised(Generator(model, cfg), samples):
            break
    model.eval()
    assert _memorised(Generator(model, cfg), samples), f"not memorised after {step} steps"

    root = tmp_path_factory.mktemp("root")
    run = root / "runs" / "tiny"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    for epoch, weights, score in ((1, untrained, 5.0), (2, model.state_dict(), 1.0), (3, untrained, 9.0)):
        d = run / f"checkpoint_epoch{epoch:04d}"
        d.mkdir()
        save_checkpoint(d, metrics={"val_score": score, "epoch": epoch}, model=weights, config=cfg.to_dict(),
                        epoch=epoch)
    save_piece(root, PIECE, "scn15_11.mid", enc.piece, enc.rows)
    (root / "manifest.jsonl").write_text(json.dumps({"path": "scn15_11.mid", "status": "ok", "piece": PIECE,
                                                     "split": "train"}) + "\n")
    (root / "shards").mkdir()
    programs = [1] + list(range(16, 16 + 22))       # class 0 written back as program 1
    index = {"format_version": 1, "write_back_programs": programs}
    (root / "shards" / "index.json").write_text(json.dumps(index))
    yield {"root": root, "name": "tiny", "samples": samples, "cfg": cfg, "steps": step}


@pytest.fixture(scope="module")
def gen(trained):
    return Generator.from_run(trained["root"], "tiny")


def _cli(trained, *args) -> int:
    return main(["generate", "tiny", "--root", str(trained["root"]), "--seed", "11", *args])


def _files(trained, pattern):
    return sorted((trained["root"] / "runs" / "tiny" / "generated").glob(pattern))


def _rows_equal(a, b):
    return a.shape == b.shape and np.array_equal(a[:, [0, 2, 3, 4]], b[:, [0, 2, 3, 4]])


# -- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_choice(trained):
    run = run_dir(trained["root"], "tiny")
    assert resolve_checkpoint(run, "best").name == "checkpoint_epoch0002"
    assert resolve_checkpoint(run, "latest").name == "checkpoint_epoch0003"
    assert resolve_checkpoint(run, "checkpoint_epoch0001").epoch == 1
    for bad in ("../tiny/checkpoint_epoch0001", "checkpoint_epoch0009", "/etc", "state.pt"):
        with pytest.raises(MahlerError, match="no checkpoint"):
            resolve_checkpoint(run, bad)
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(MahlerError, match="invalid run name"):
            run_dir(trained["root"], bad)


def test_defaults_come_from_the_run_config(gen):
    assert gen.checkpoint_name == "checkpoint_epoch0002"
    assert gen.temperatures.pitch == 0.9


# -- reconstruction -------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_memorised_bars_are_reconstructed_exactly(gen, trained, teacher_forcing):
    rec = gen.reconstruct(trained["samples"], temperatures=ARGMAX, teacher_forcing=teacher_forcing)
    for got, want in zip(rec.rows, trained["samples"]):
        assert _rows_equal(got, want.inputs)
    assert rec.stats.accuracy() == dict.fromkeys(("offset", "duration", "pitch", "instrument"), 1.0)
    report = rec.stats.summary(teacher_forcing)
    assert report["note_f1_mean_per_bar"] == 1.0 and report["exact_bars"] == N_BARS
    if teacher_forcing:
        assert all(1.0 <= v < 1.5 for v in report["perplexity"].values())


def test_recon_cli_writes_original_and_reconstruction(trained, capsys):
    assert _cli(trained, "--type", "recon", "--file", "scn15_11", "--units", "3cz", "--samples", "2",
                "--offset-temperature", "0", "--duration-temperature", "0", "--pitch-temperature", "0",
                "--instrument-temperature", "0", "--use-teacher-forcing") == 0
    out = capsys.readouterr().out
    assert "offset 1.0000" in out and "perplexity" in out
    [path] = _files(trained, "recon_scn15_11_unit3cz_tf_*.mid")
    assert path.with_suffix(".png").stat().st_size > 1000
    enc = encode_bytes(path.read_bytes(), path.name)
    # the context (bar 2 of the piece), the original bar 3, two exact reconstructions (then the tail
    # of notes ringing past the last bar line; the quantiser may re-time a duration there)
    bars = [enc.rows.bar(b)[0] for b in range(enc.rows.num_bars)]
    assert len(bars) >= 4 and _rows_equal(bars[1], bars[2])
    assert np.array_equal(bars[1][:, [0, 3, 4]], bars[3][:, [0, 3, 4]])


# -- every mode -------------------------------------------------------------------------------------


MODES = {
    "pred": ["--file", "scn15_11", "--units", "-", "2c", "4cz", "--samples", "2", "--length", "3",
             "--use-start-ctx"],
    "recon": ["--file", "scn15_11", "--units", "1z", "5cz"],
    "intpol": ["--file", "scn15_11", "--units", "2cz", "6cz", "--steps", "3", "--use-slerp"],
    "n_pred": ["--file", "scn15_11", "--units", "1c", "3c", "5z", "--length", "2", "--samples", "2"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_writes_midi_that_reads_and_re_encodes(trained, mode):
    before = set(_files(trained, f"{mode}_*.mid"))
    assert _cli(trained, "--type", mode, *MODES[mode]) == 0
    paths = sorted(set(_files(trained, f"{mode}_*.mid")) - before)
    expected = {"pred": 6, "recon": 2, "intpol": 1, "n_pred": 2}[mode]
    assert len(paths) == expected, paths
    for path in paths:
        midi = mido.MidiFile(file=io.BytesIO(path.read_bytes()))
        assert midi.ticks_per_beat == 480
        programs = {m.program for t in midi.tracks for m in t if m.type == "program_change"}
        assert programs == {1}, "class 0 (piano) is written with the corpus write-back program"
        enc = encode_bytes(path.read_bytes(), path.name)
        assert enc.rows.num_bars >= 2 and len(enc.piece.notes) > 0
        assert path.with_suffix(".png").is_file()
    names = [p.name for p in paths]
    if mode == "pred":
        assert sum(n.startswith("pred_scn15_11_unitnone_try") for n in names) == 2
        assert sum(n.startswith("pred_scn15_11_unit2c_try") for n in names) == 2
        # a c-unit's context bar comes first: 1 + 3 bars
        enc = encode_bytes(next(p for p in paths if "unit2c_" in p.name).read_bytes(), "x")
        assert enc.rows.num_bars in (3, 4)   # a silent last bar leaves no bar behind in MIDI
    if mode == "intpol":
        assert "_unit2cz_unit6cz_intpol_sz_3_slerp_" in names[0]


def test_n_recon_report(trained, capsys):
    for extra in ([], ["--use-teacher-forcing"], ["--no-ctx", "--use-start-ctx"]):
        assert _cli(trained, "--type", "n_recon", "--split", "train", "--batch-size", "5", "--max-bars", "12",
                    "--offset-temperature", "0", "--duration-temperature", "0", "--pitch-temperature", "0",
                    "--instrument-temperature", "0", *extra) == 0
    reports = [json.loads(p.read_text()) for p in _files(trained, "n_recon_*.json")]
    assert len(reports) == 3
    for r in reports:
        assert set(r["accuracy_step_aligned"]) == {"offset", "duration", "pitch", "instrument"}
        assert r["bars"] == 12 and r["pieces"] == 1 and 0 <= r["note_f1_mean_per_bar"] <= 1
    tf = [r for r in reports if r["teacher_forcing"]]
    assert len(tf) == 1 and "perplexity" in tf[0]
    assert "n_recon 5 bars" in capsys.readouterr().out   # running accuracy per batch


# -- interpolation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("slerp", [False, True])
@pytest.mark.parametrize("with_context", [False, True])
def test_intpol_endpoints_are_the_reconstructions(gen, trained, slerp, with_context):
    a, b = trained["samples"][2], trained["samples"][6]

    def unit(s):
        return {"inputs": s.inputs, "metre": s.metre, "context": s.context if with_context else "zeros"}

    rows = gen.interpolate(unit(a), unit(b), steps=4, slerp=slerp, seed=5)
    assert len(rows) == 5
    recon = gen.reconstruct([unit(a), unit(b)], seed=5).rows
    assert _rows_equal(rows[0], recon[0]) and _rows_equal(rows[-1], recon[1])
    argmax = gen.interpolate(unit(a), unit(b), steps=4, slerp=slerp, temperatures=ARGMAX)
    assert _rows_equal(argmax[0], a.inputs) and _rows_equal(argmax[-1], b.inputs) if with_context else True


def test_intpol_with_a_shared_context(gen, trained):
    s = trained["samples"]
    shared = s[4].context
    rows = gen.interpolate({"inputs": s[2].inputs, "metre": s[2].metre, "context": shared},
                           {"inputs": s[6].inputs, "metre": s[6].metre, "context": shared},
                           steps=2, context=shared, seed=1)
    assert len(rows) == 3


# -- sampling -------------------------------------------------------------------------------------


def test_seeded_calls_are_reproducible_and_batch_independent(gen, trained):
    a = gen.sample(n_bars=3, n_samples=4, seed=42, context="start")
    b = gen.sample(n_bars=3, n_samples=4, seed=42, context="start")
    c = gen.sample(n_bars=3, n_samples=4, seed=43, context="start")
    assert all(np.array_equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))
    assert any(not np.array_equal(x, y) for sa, sc in zip(a, c) for x, y in zip(sa, sc))
    # one request alone or batched with others of other lengths, metres and contexts: same rows
    req = SampleRequest(3, seed=42, index=2, context="start")
    others = [SampleRequest(1, seed=1, metre="3/4", context="zeros"),
              SampleRequest(5, seed=2, context=trained["samples"][3].context, temperatures=ARGMAX)]
    alone = gen.sample_many([req])[0]
    batched = gen.sample_many([others[0], req, others[1]])
    assert all(np.array_equal(x, y) for x, y in zip(alone, a[2]))
    assert all(np.array_equal(x, y) for x, y in zip(batched[1], alone))
    assert [len(x) for x in batched] == [1, 3, 5]


def test_generated_bars_chain_and_respect_the_metre(gen):
    for metre in ("3/4", "6/8", "2"):
        m = parse_metre(metre)
        bars = gen.sample(n_bars=2, n_samples=3, seed=0, metre=m)
        for chain in bars:
            assert len(chain) == 2
            for rows in chain:
                t = np.cumsum(CLASS_TICKS[rows[:, 0].astype(int)])
                silent = len(rows) == 1 and rows[0, 2] == 0 and t[0] == m.bar_ticks
                assert silent or t[-1] < m.bar_ticks
        midi = rows_to_midi_bytes(bars[0], m)
        assert mido.MidiFile(file=io.BytesIO(midi)).tracks


def test_z_seeded_and_context_seeded_sampling(gen, trained):
    s = trained["samples"][5]
    z = gen.encode([s.inputs], gen.context_summary([s.context]))[0].cpu().numpy()
    [chain] = gen.sample(n_bars=2, seed=0, context_rows=s.context, z=z, temperatures=ARGMAX, metre=s.metre)
    assert _rows_equal(chain[0], s.inputs)     # argmax from the bar's own z and context = the bar


def test_bad_arguments_are_clear_errors(trained, capsys):
    cases = [
        (["--type", "recon", "--file", "scn15_11", "--units", "3c"], "needs z"),
        (["--type", "recon", "--file", "scn15_11", "--units", "99z"], "past the piece's last bar"),
        (["--type", "recon", "--file", "scn15_11", "--units", "3x"], "expected '<bar index>"),
        (["--type", "pred", "--units", "3c"], "needs --file"),
        (["--type", "recon", "--file", "../../etc/passwd", "--units", "0z"], "no such piece"),
        (["--type", "pred", "--units", "-", "--pitch-temperature", "-1"], "temperature"),
        (["--type", "pred", "--units", "-", "--meter", "5/32"], "metre"),
        (["--type", "pred", "--units", "-", "--model", "../x"], "no checkpoint"),
        (["--type", "intpol", "--file", "scn15_11", "--units", "2z"], "exactly two"),
        (["--type", "dream", "--units", "-"], "unknown --type"),
    ]
    for args, message in cases:
        assert _cli(trained, *args) == 2, args
        assert message in capsys.readouterr().err, args


# -- other architectures, the job entry point --------------------------------------------------------


@pytest.mark.parametrize("use_context, use_vae", [(False, True), (True, False), (False, False)])
def test_models_without_context_or_vae(trained, use_context, use_vae):
    cfg = load_config(resolve_config_path("tiny"))
    cfg.model.use_context, cfg.model.use_vae = use_context, use_vae
    cfg.data.max_rows_per_bar = 24
    gen = Generator(MahlerNet(cfg.model), cfg)
    s = trained["samples"]
    chains = gen.sample(n_bars=2, n_samples=3, seed=1, metre="2/4")
    assert [len(c) for c in chains] == [2, 2, 2]
    rec = gen.reconstruct(s[:3], teacher_forcing=True)
    assert rec.stats.bars == 3 and "overall" in rec.stats.perplexity()
    assert len(gen.reconstruct(s[:3]).rows) == 3
    if use_vae:
        assert len(gen.interpolate(s[1], s[2], steps=2, slerp=True)) == 3
        assert len(gen.decode_under_contexts([s[1].context, s[4].context], n_samples=2)) == 2
    else:
        with pytest.raises(MahlerError, match="VAE"):
            gen.interpolate(s[1], s[2], steps=2)


def test_job_entry_point(trained):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "jobs" / "generate.py"), "tiny",
                             "--root", str(trained["root"]), "--type", "pred", "--units", "-",
                             "--seed", "3", "--no-plot", "--length", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pred_none_unitnone_try0_" in result.stdout


# -- the active sets carried into a bar across a metre change --------------------------------------


def _three_four_then_four_four():
    """Bar 0 in 3/4 with a half note on its last beat (sounding 1 beat into bar 1), bar 1 in 4/4."""
    from mahler_dist.music.piece import Piece, bars_for
    from mahler_dist.music.rows import bar_windows, piece_to_rows
    from mahler_dist.music.timing import Metre

    half, quarter = (int(np.flatnonzero(CLASS_TICKS == t)[0]) for t in (960, 480))
    bars = bars_for([(Metre(3, 4), 1), (Metre(4, 4), 1)])
    notes = [(0, 960, half, 40, 2), (1, 0, quarter, 52, 5)]
    return bar_windows(piece_to_rows(Piece("metre change", bars, np.array(notes))))


def _carried_active(gen):
    """The active sets at the start of each decoded bar, from the carry that Generator.decode
    gets (notes of the context bar still sounding there), packed as the data packs them."""
    from mahler_dist.generate.sampler import pack_active

    seen = []
    decode = gen.decode

    def recording(z, ctx, metres, temperatures, keys, bar_index=0, carry=None, **options):
        p_end, i_end = carry
        seen.append(pack_active(p_end > 0, i_end > 0))
        return decode(z, ctx, metres, temperatures, keys, bar_index, carry, **options)

    gen.decode = recording
    return seen


def test_carried_active_sets_use_the_context_bars_metre():
    from mahler_dist.generate import modes

    windows = _three_four_then_four_four()
    ctx, target = windows[1].context, windows[1]
    assert windows[0].metre == "3/4" and target.metre == "4/4"
    expected = target.active[0]                   # music/rows: what sounds at bar 1's start
    assert expected.any(), "the half note of the 3/4 bar must sound into the 4/4 bar"
    cfg = load_config(resolve_config_path("tiny"))
    torch.manual_seed(0)
    gen = Generator(MahlerNet(cfg.model), cfg)
    seen = _carried_active(gen)
    gen.reconstruct([{"inputs": target.inputs, "context": ctx, "metre": "4/4", "context_metre": "3/4"}],
                    temperatures=ARGMAX)
    assert np.array_equal(seen[0][0].numpy(), expected)
    seen.clear()
    gen.sample_many([SampleRequest(1, 0, 0, ARGMAX, "4/4", ctx, context_metre="3/4")])
    assert np.array_equal(seen[0][0].numpy(), expected)
    # generate's modes take the context metre from the piece's bar before
    piece = modes.PieceWindows("p", "p", windows)
    assert modes._context_metre(piece, 1) == "3/4" and modes._context_metre(piece, 0) is None


def test_one_rows_to_piece_for_templates_and_generated_bars():
    """music.rows.rows_to_piece is the only decoder: generate uses it, and a piece's rows decode
    the same onto its own bars as onto its metres laid end to end (one chunk)."""
    from mahler_dist.generate import output
    from mahler_dist.music import rows as music_rows

    assert output.rows_to_piece is music_rows.rows_to_piece
    enc = encode_file(EXAMPLE)
    bars = [enc.rows.bar(b)[0] for b in range(enc.rows.num_bars)]
    onto_template = music_rows.rows_to_piece(enc.rows, enc.piece)
    onto_metres = music_rows.rows_to_piece(bars, [b.metre for b in enc.piece.bars], enc.piece.name)
    assert onto_template.name == onto_metres.name == enc.piece.name
    assert np.array_equal(onto_template.notes, onto_metres.notes) and len(onto_template.notes)
    assert [b.start for b in onto_template.bars] == [b.start for b in onto_metres.bars]
    with pytest.raises(ValueError, match="bars"):
        music_rows.rows_to_piece(bars[:2], enc.piece.bars)


@pytest.mark.parametrize("meter", ["5/4", "7/8"])
def test_pred_in_an_additive_metre(trained, meter):
    """Additive metres are modelled (issue 14): a model can be asked for bars of 5 or 7 beats."""
    from mahler_dist.music.midi_io import read_midi

    before = set(_files(trained, "*.mid"))
    assert _cli(trained, "--type", "pred", "--units", "-", "--meter", meter, "--length", "3") == 0
    made = sorted(set(_files(trained, "*.mid")) - before)
    assert made
    score = read_midi(made[-1].read_bytes())
    assert [f"{m.numerator}/{m.denominator}" for m in score.metres] == [meter]
