"""Every shipped preset loads, builds the model it promises, and a bad key in it is rejected
with a message naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mahler_dist.config import PRESETS_DIR, config_from_dict, load_config, preset_paths, resolve_config_path
from mahler_dist.errors import ConfigError
from mahler_dist.model.summary import build_meta_model, describe_text, parameter_groups

PRESETS = preset_paths()

# The original's 23.0 M (reference 3), group by group.
REFERENCE_GROUPS_M = {"context encoder": 7.32, "input encoder": 7.31, "decoder LSTM": 7.05,
                      "posterior (VAE)": 1.05, "z projection + BN": 0.13, "output heads": 0.14}


def test_the_three_presets_ship():
    assert {"mahlernet", "small", "tiny"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_builds_and_opens_with_a_comment(path: Path):
    assert path.read_text().startswith("#"), "a preset opens with what it is for (STYLE.md 5)"
    config = load_config(path)
    counts = parameter_groups(build_meta_model(config.model))
    assert counts["total"] > 0
    assert "total" in describe_text(config)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_a_bad_key_in_a_preset_names_key_and_file(path: Path, tmp_path: Path):
    text = path.read_text()
    if "model:\n" in text:
        text = text.replace("model:\n", "model:\n  enc_sise: 3\n", 1)
    else:
        text += "\nmodel:\n  enc_sise: 3\n"
    bad = tmp_path / path.name
    bad.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "model.enc_sise" in str(e.value) and str(bad) in str(e.value)
    assert "enc_size" in str(e.value)          # the valid keys are listed


def test_mahlernet_preset_has_the_originals_23_0_m_parameters():
    counts = parameter_groups(build_meta_model(load_config(PRESETS_DIR / "mahlernet.yaml").model))
    assert counts["total"] == pytest.approx(23.0e6, rel=0.01)
    for group, millions in REFERENCE_GROUPS_M.items():
        assert counts[group] / 1e6 == pytest.approx(millions, abs=0.006), group


def test_describe_prints_groups_and_total_for_mahlernet():
    text = describe_text(load_config(PRESETS_DIR / "mahlernet.yaml"))
    assert "23.01 M" in text and "23,005,951" in text
    for group in REFERENCE_GROUPS_M:
        assert group in text
    assert "step input 366 + 1536 = 1902" in text        # reference 3.4


def test_small_is_a_few_million_and_tiny_is_smaller():
    small = parameter_groups(build_meta_model(load_config(PRESETS_DIR / "small.yaml").model))
    tiny = parameter_groups(build_meta_model(load_config(PRESETS_DIR / "tiny.yaml").model))
    assert 1e6 < small["total"] < 6e6 and tiny["total"] < 0.5e6


@pytest.mark.parametrize("data, fragment", [
    ({"model": {"learned_prior": True, "use_context": False}}, "model.learned_prior"),
    ({"model": {"learned_prior": True, "use_vae": False}}, "model.learned_prior"),
    ({"loss": {"beta_annealing": True, "beta_rate": 1.5}}, "loss.beta_rate"),
    ({"loss": {"free_bits": -1.0}}, "loss.free_bits: must be >= 0"),
    ({"loss": {"kl_reduction": "max"}}, "loss.kl_reduction"),
    ({"train": {"grad_clip_norm": -1.0}}, "train.grad_clip_norm"),
    ({"train": {"weight_decay": -0.1}}, "train.weight_decay"),
    ({"model": {"init_std": 0.0}}, "model.init_std: must be > 0"),
])
def test_semantic_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(data, "preset.yaml")


def test_the_serve_config_beside_the_presets_is_not_a_preset():
    assert (PRESETS_DIR / "serve.yaml").exists() and "serve.yaml" not in {p.name for p in PRESETS}
    with pytest.raises(ConfigError, match="presets: mahlernet, small, tiny"):
        resolve_config_path("serve")
