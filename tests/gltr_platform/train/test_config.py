"""TrainConfig: presets, `--set` overrides, flat MLflow params, and one clear error per invalid input."""

from __future__ import annotations

import pytest

from gltr_platform.train.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    build_config,
    parse_value,
)


def config_error(overrides: dict | None = None, base: dict | None = None, preset: str | None = "cpu-demo") -> str:
    """The ConfigError message that build_config raises for these inputs."""
    with pytest.raises(ConfigError) as caught:
        build_config(preset, overrides, base)
    error = caught.value
    # No pydantic report chained behind it either: a traceback would show this message only.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return str(error)


def assert_one_problem(message: str) -> None:
    """One line, one problem, no pydantic report around it."""
    assert "\n" not in message and ";" not in message
    assert "pydantic" not in message and "validation error" not in message


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates_and_is_recorded_in_the_config(preset):
    cfg = build_config(preset)

    assert cfg.preset == preset
    assert cfg.train.batch_size % cfg.train.num_instances == 0


def test_no_preset_gives_the_defaults():
    assert build_config() == TrainConfig()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[1,2,4]", [1, 2, 4]),
        ("[1, 2, 4]", [1, 2, 4]),
        ("true", True),
        ("false", False),
        ("null", None),
        ("0.1", 0.1),
        ("20", 20),
        ("resnet18", "resnet18"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_set_values_parse_as_yaml_scalars_and_lists(text, value):
    assert parse_value(text) == value


def test_overrides_of_every_type_reach_the_config():
    cfg = build_config(
        "cpu-demo",
        {
            "model.dilations": parse_value("[1,2,4]"),
            "model.bnneck": parse_value("true"),
            "model.pretrained": parse_value("null"),
            "optim.lr": parse_value("0.02"),
            "train.epochs": parse_value("3"),
        },
    )

    assert cfg.model.dilations == (1, 2, 4)
    assert cfg.model.bnneck is True and cfg.model.pretrained is None
    assert cfg.optim.lr == 0.02 and cfg.train.epochs == 3


def test_exponent_notation_is_a_float_even_though_yaml_reads_it_as_a_string():
    assert build_config("cpu-demo", {"optim.lr": parse_value("1e-3")}).optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("text", ["1,2,4", "(1, 2, 4)", "[1, 2, 4]"])
def test_dilations_accept_a_comma_separated_string_or_a_list(text):
    assert build_config("cpu-demo", {"model.dilations": parse_value(text)}).model.dilations == (1, 2, 4)


def test_overrides_win_over_the_base_which_wins_over_the_preset():
    base = {"train": {"epochs": 5, "seed": 7}, "model": {"frame_dim": 16}}
    cfg = build_config("cpu-demo", {"train.epochs": 3}, base)

    assert cfg.train.epochs == 3  # override beats base
    assert cfg.train.seed == 7 and cfg.model.frame_dim == 16  # base beats preset and defaults
    assert cfg.train.batch_size == PRESETS["cpu-demo"]["train"]["batch_size"]  # base merges, not replaces
    assert cfg.model.backbone == "resnet18"


def test_flat_gives_dotted_keys_to_scalars_for_mlflow_params():
    flat = build_config("cpu-demo").flat()

    assert flat["model.dilations"] == "1,2,3"
    assert flat["preset"] == "cpu-demo" and flat["train.batch_size"] == 8
    assert all(key == "preset" or key.count(".") == 1 for key in flat)
    assert all(v is None or isinstance(v, str | int | float | bool) for v in flat.values())
    sections = ("data", "model", "optim", "train", "scaling", "run")
    fields = {f"{s}.{k}" for s in sections for k in type(getattr(TrainConfig(), s)).model_fields}
    assert set(flat) == fields | {"preset"}


def test_a_config_survives_the_json_round_trip_to_the_workers():
    cfg = build_config("modern", {"model.dilations": [1, 3, 5]})

    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize(
    ("overrides", "named", "says"),
    [
        ({"model.dilations": [0, 1]}, "model.dilations", "positive integers"),
        ({"model.dilations": [-1, 2]}, "model.dilations", "positive integers"),
        ({"model.dilations": [1, 2, 1]}, "model.dilations", "distinct"),
        ({"model.dilations": [1.5, 2]}, "model.dilations", "positive integers"),
        ({"model.dilations": []}, "model.dilations", "non-empty"),
        ({"model.dilations": "a"}, "model.dilations", "positive integers"),
        ({"model.dilations": "1,a"}, "model.dilations", "positive integers"),
        ({"model.dilations": [True, 2]}, "model.dilations", "positive integers"),
        ({"data.seq_len": 0}, "data.seq_len", "greater than or equal to 1"),
        ({"model.attention_width": 0}, "model.attention_width", ">= 1"),
        ({"model.attention_width": -4}, "model.attention_width", ">= 1"),
        ({"model.backbone": "resnet999"}, "model.backbone", "resnet50"),
        ({"train.batch_size": 9}, "batch_size", "num_instances"),
        ({"train.epochs": "ten"}, "train.epochs", "'ten'"),
        ({"train.epochs": 2.5}, "train.epochs", "2.5"),
        ({"optim.lr": 0}, "optim.lr", "greater than 0"),
        ({"data.protocol": "market"}, "data.protocol", "'official' or 'torchreid'"),
        ({"data.split": 10}, "data.split", "less than or equal to 9"),
        ({"data.split": -1}, "data.split", "greater than or equal to 0"),
        ({"data.split": True}, "data.split", "must be a number"),
    ],
)
def test_an_invalid_value_fails_with_one_message_that_names_the_key(overrides, named, says):
    message = config_error(overrides)

    assert message.startswith("invalid configuration: ")
    assert named in message and says in message
    assert_one_problem(message)


def test_a_section_that_is_not_a_mapping_fails_naming_the_section():
    message = config_error(base={"model": 5})

    assert message.startswith("invalid configuration: model: ") and "dictionary" in message
    assert_one_problem(message)


def test_an_unknown_section_fails_and_lists_the_sections():
    message = config_error({"optimizer.lr": 0.1})

    assert "unknown section 'optimizer'" in message
    for section in ("data", "model", "optim", "train", "scaling", "run"):
        assert section in message
    assert_one_problem(message)


def test_an_unknown_key_fails_and_lists_the_valid_keys_of_its_section():
    message = config_error({"model.depth": 50})

    assert "unknown key 'model.depth'" in message
    for key in ModelConfig.model_fields:
        assert key in message
    assert_one_problem(message)


@pytest.mark.parametrize("key", ["epochs", "train.", ".epochs", "train.epochs.max"])
def test_an_override_key_that_is_not_section_dot_key_fails_naming_it(key):
    message = config_error({key: 3})

    assert repr(key) in message and "section.key" in message
    assert_one_problem(message)


def test_an_override_cannot_reach_into_the_preset_name():
    message = config_error({"preset.name": "x"})

    assert "'preset.name'" in message and "not a section" in message


def test_an_unknown_preset_fails_and_lists_the_presets():
    message = config_error(preset="gpu-demo")

    assert "unknown preset 'gpu-demo'" in message
    for preset in PRESETS:
        assert preset in message
    assert_one_problem(message)


def test_several_invalid_values_are_all_named_in_one_line():
    message = config_error({"data.seq_len": 0, "model.attention_width": 0})

    assert "data.seq_len" in message and "model.attention_width" in message and "\n" not in message


@pytest.mark.parametrize(("key", "text"), [("train.amp", "off"), ("train.channels_last", "on")])
def test_on_and_off_settings_can_be_set_from_the_command_line(key, text):
    cfg = build_config("cpu-demo", {key: parse_value(text)})

    assert cfg.flat()[key] == text


def test_a_boolean_where_a_number_belongs_is_a_type_error():
    message = config_error({"train.epochs": parse_value("yes")})

    assert "train.epochs" in message


def test_backbone_names_match_the_model_library():
    from gltr_model import BACKBONES
    from gltr_platform.train.config import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


def test_no_validation_split_is_allowed_but_not_a_negative_one():
    assert build_config("cpu-demo", {"data.val_ids": 0}).data.val_ids == 0
    assert "data.val_ids" in config_error({"data.val_ids": -1})


def test_the_tracklets_sampler_draws_no_identities_so_k_must_be_1():
    message = config_error({"data.sampler": "tracklets"})  # cpu-demo has K = 2

    assert "train.num_instances" in message and "data.sampler" in message
    assert_one_problem(message)
    cfg = build_config("cpu-demo", {"data.sampler": "tracklets", "train.num_instances": 1})
    assert cfg.data.sampler == "tracklets"


def test_an_unknown_sampler_or_scaling_rule_fails_naming_the_key():
    assert "data.sampler" in config_error({"data.sampler": "random"})
    assert "optim.scale_lr" in config_error({"optim.scale_lr": "sqrt"})


@pytest.mark.parametrize(("rule", "lr"), [("none", 3e-3), ("linear", 4 * 3e-3)])
def test_derived_params_give_the_global_batch_and_the_learning_rate_used(rule, lr):
    cfg = build_config("cpu-demo", {"scaling.num_workers": 4, "optim.scale_lr": rule})

    assert cfg.derived() == {"train.global_batch_size": 32, "optim.effective_lr": pytest.approx(lr)}
    assert not set(cfg.derived()) & set(cfg.flat())  # logged next to the settings, never in place of one
