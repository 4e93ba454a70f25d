from pathlib import Path

import pytest

from gru_jax.config import TrainConfig, load_config_file, make_config
from gru_jax.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_file_matches_builtin_defaults():
    values = load_config_file(CONFIGS / "default.toml")
    defaults = TrainConfig()
    for key, value in values.items():
        assert getattr(defaults, key) == value, key


def test_dlstudio_file_has_dlstudio_settings():
    config = make_config(CONFIGS / "dlstudio.toml", {"cell": "gru"})
    assert config.batch_size == 1
    assert config.learning_rate == 1e-3
    assert config.momentum == 0.9
    assert config.epochs == 3
    assert config.hidden_size == 100
    assert config.resolved_num_layers() == 2
    assert make_config(CONFIGS / "dlstudio.toml", {"cell": "pmgru"}).resolved_num_layers() == 1


def test_flag_overrides_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epochs = 4\nlearning_rate = 0.5\n")
    config = make_config(path, {"epochs": 2, "learning_rate": None})
    assert config.epochs == 2
    assert config.learning_rate == 0.5


def test_unknown_key_rejected(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epoch = 4\n")
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_config_file(path)
