"""Typed configs: YAML ↔ dataclasses one-to-one, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomgen.train.config import ConfigError, ExperimentConfig, apply_overrides, config_path, packaged_configs

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = ExperimentConfig.from_yaml(path)
    (tmp_path / "again.yaml").write_text(config.to_yaml())
    assert ExperimentConfig.from_yaml(tmp_path / "again.yaml") == config


def test_the_five_presets_exist():
    assert {p.stem for p in CONFIGS} >= {
        "digits-ddpm",
        "digits-vae",
        "mnist5k-ddpm",
        "mnist5k-vae",
        "fashion-mnist-ddpm",
    }


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n")
    config = ExperimentConfig.from_yaml(
        path,
        [
            "separation.method=atom",
            "train.steps=3",
            "model.block_out_channels=[8, 16]",
            "separation.options.mode=repulsive",
            "train.ema_decay=null",
        ],
    )
    assert config.separation.method == "atom"
    assert config.train.steps == 3
    assert config.model.block_out_channels == [8, 16]
    assert config.separation.options == {"mode": "repulsive"}
    assert config.train.ema_decay is None
    assert config.train.learning_rate == 2e-3  # untouched defaults stay


def test_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) \['stepz'\] in 'train'; valid keys: \[.*'steps'"
    ):
        ExperimentConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trian'\] at the top level"):
        ExperimentConfig.from_dict({"trian": {}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"steps": "many"}}, "train.steps must be int"),
        ({"train": {"steps": 0}}, "train.steps must be a positive integer"),
        ({"separation": {"method": "magic"}}, "separation.method must be one of"),
        ({"separation": {"weight": -1}}, "separation.weight must be ≥ 0"),
        ({"model": {"block_out_channels": [30, 64]}}, "divisible by model.norm_num_groups"),
        ({"data": {"name": "imagefolder"}}, "data.root is required"),
        ({"data": {"name": "cifar"}}, "data.name must be one of"),
        ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision must be one of"),
        ({"train": {"ema_decay": 1.5}}, "train.ema_decay must lie in"),
        ({"separation": {"options": {"dim": 3}}}, "dim is read from the model"),
        ({"train": {"use_ema": True}}, r"unknown key\(s\) \['use_ema'\]"),
        ({"separation": {"within_class": True}}, "within_class needs separation.method: atom"),
        (
            {"separation": {"method": "atom", "within_class": True}},
            "within_class needs class labels: set model.num_classes",
        ),
        (
            {"train": {"steps": 10, "snapshot_steps": [5, 11]}},
            r"snapshot_steps must lie in \[1, train.steps=10\]",
        ),
    ],
)
def test_bad_values_are_rejected_with_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_yaml(tmp_path / "nope.yaml")


def test_packaged_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: an installed wheel's situation
    assert {"digits-ddpm", "mnist5k-ddpm", "digits-vae"} <= set(packaged_configs())
    by_name = ExperimentConfig.from_yaml("digits-ddpm")
    assert by_name == ExperimentConfig.from_yaml("configs/digits-ddpm.yaml")
    assert by_name.data.name == "digits" and by_name.train.steps > 0
    with pytest.raises(ConfigError, match="digits-ddpm"):  # the error lists what ships
        config_path("digits-dppm")
