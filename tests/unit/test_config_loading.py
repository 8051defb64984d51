"""YAML config loading: defaults, typed values, and errors that name the key, file and valid keys."""

import pytest

from mahler_dist.config import Config, config_from_dict, load_config, resolve_config_path, save_config
from mahler_dist.errors import ConfigError


def test_defaults_are_the_original_example_config():
    c = Config()
    assert (c.model.enc_size, c.model.z_dim, c.model.dec_size, c.train.optimizer) == (512, 256, 512, "rmsprop")


def test_yaml_overrides_and_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  z_dim: 32\ntrain:\n  lr: 1\n  optimizer: adam\n")
    c = load_config(path)
    assert c.model.z_dim == 32 and c.train.lr == 1.0 and isinstance(c.train.lr, float)
    assert c.model.enc_size == 512   # untouched keys keep defaults
    save_config(c, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == c
    assert c.digest() == load_config(tmp_path / "saved.yaml").digest() != Config().digest()


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  z_dims: 32\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "model.z_dims" in message and str(path) in message and "z_dim" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lr": "fast", "optimizer": "sgd"}, "bogus": {}})
    message = str(e.value)
    assert "train.lr" in message and "'sgd'" in message and "unknown key 'bogus'" in message


@pytest.mark.parametrize(
    "data, fragment",
    [({"model": {"z_dim": 0}}, "model.z_dim: must be > 0"),
     ({"model": {"enc_dropout": 1.5}}, "enc_dropout"),
     ({"model": {"use_vae": "yes"}}, "expected true or false"),
     ({"model": {"enc_layers": 2.5}}, "expected an integer"),
     ({"model": ["a"]}, "expected a mapping"),
     ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "val_fraction")],
)
def test_bad_values(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(data, "x.yaml")


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="no config file or preset named 'huge'"):
        resolve_config_path("huge")


def test_misspelt_attribute_fails_instead_of_adding_a_silent_field():
    """slots=True: `config.train.epoch = 3` (for `epochs`) must raise, not be ignored."""
    from mahler_dist.config import Config

    config = Config()
    for section, wrong in (("train", "epoch"), ("data", "val_frac"), ("model", "zdim")):
        with pytest.raises(AttributeError):
            setattr(getattr(config, section), wrong, 3)
