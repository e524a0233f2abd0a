"""The search space of a sweep: a small YAML file of choices, validated whole before anything starts.

    dilations: [[1, 2, 3], [1, 2, 4], [2, 4, 8]]   # pyramids: number of branches and their rates
    seq_len: [4, 8, 12, 16]                          # frames per training clip (T)
    attention_width: [64, 128, 256, 512]             # TSA query/key/value width
    lr: {loguniform: [1.0e-4, 1.0e-2]}               # optional
    weight_decay: {loguniform: [1.0e-5, 1.0e-3]}     # optional

Optuna's categorical choices must be scalars, so a pyramid travels through Tune and Optuna as the
string "1,2,4" and becomes a tuple again when the trial builds its TrainConfig.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gltr_platform.train.config import ConfigError, TrainConfig, validate_config

# Where each searched parameter lives in TrainConfig.
TARGETS = {
    "dilations": "model.dilations",
    "seq_len": "data.seq_len",
    "attention_width": "model.attention_width",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
}


class LogUniform(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _ordered_positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"loguniform bounds must satisfy 0 < low < high, got {list(v)}")
        return v


class SearchSpace(BaseModel):
    """Choices for each searched parameter; validated against TrainConfig combination by combination."""

    model_config = ConfigDict(extra="forbid")
    dilations: list[list[int]] = Field(min_length=1)
    seq_len: list[int] = Field(min_length=1)
    attention_width: list[int] = Field(min_length=1)
    lr: LogUniform | list[float] | None = None
    weight_decay: LogUniform | list[float] | None = None

    def tune_space(self) -> dict[str, Any]:
        """The Ray Tune param_space (categorical for pyramids, T and width)."""
        from ray import tune  # here, so a command line is checked before Ray is imported

        space: dict[str, Any] = {
            "dilations": tune.choice([",".join(map(str, d)) for d in self.dilations]),
            "seq_len": tune.choice(self.seq_len),
            "attention_width": tune.choice(self.attention_width),
        }
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if isinstance(value, LogUniform):
                space[key] = tune.loguniform(*value.loguniform)
            elif value:
                space[key] = tune.choice(value)
        return space

    def grid(self) -> list[dict[str, Any]]:
        """Every categorical combination (the full grid; continuous parameters left out)."""
        keys = ("dilations", "seq_len", "attention_width")
        choices = [[",".join(map(str, d)) for d in self.dilations], self.seq_len, self.attention_width]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def trial_config(base: TrainConfig, params: dict[str, Any], **run_updates: Any) -> TrainConfig:
    """`base` with a trial's sampled parameters (and run settings such as its name) applied."""
    tree = base.model_dump(mode="json")
    for key, value in params.items():
        section, field = TARGETS[key].split(".")
        tree[section][field] = value
    tree["run"].update(run_updates)
    return validate_config(tree)


def check_sweepable(base: TrainConfig) -> None:
    """ConfigError unless `base` has a validation split: trials are ranked (and stopped) by validation mAP."""
    if base.data.val_ids == 0:
        raise ConfigError(
            "a sweep ranks trials by validation mAP (best_val_mAP), but data.val_ids is 0 (no validation split, "
            "as in the paper preset): set data.val_ids to the number of training identities to hold out, e.g. 8"
        )


def load_search_space(path: str | Path, base: TrainConfig) -> SearchSpace:
    """Read and validate a search space file, and check `base` and every combination against it."""
    check_sweepable(base)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read search space {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"search space {path} is not valid YAML: {e}") from None
    where = f"search space {path}"
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{where}: {'; '.join(_problem(err) for err in e.errors())}") from None
    for combo in space.grid():
        try:
            trial_config(base, combo)
        except ConfigError as e:
            raise ConfigError(f"{where}: combination {combo} is invalid: {e}") from None
    return space


def _problem(err: dict[str, Any]) -> str:
    """One pydantic error as `key: what is wrong`, naming the valid keys for an unknown one."""
    key = ".".join(map(str, err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r} (valid keys: {', '.join(SearchSpace.model_fields)})"
    if not key:  # the file is not a mapping
        return f"expected a mapping of keys {', '.join(SearchSpace.model_fields)}, got {type(err['input']).__name__}"
    return f"{key}: {err['msg'].removeprefix('Value error, ')}"
