"""One typed configuration for a GLTR training run, its presets, and `--set key=value` overrides.

The configuration is data: validated once here, at the edge, then passed around as a plain dict (Ray
ships it to every worker) and logged whole to MLflow. Unknown keys and invalid values fail with one
message that names the key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gltr_platform.data.cache_root import DEFAULT_CACHE_ROOT
from gltr_platform.errors import ConfigError

# The names gltr_model.backbone.BACKBONES builds (a test keeps them equal; importing it here would load
# torch before a command line is even parsed).
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`train.epochs=true` must not quietly become 1 epoch (pydantic's lax mode would allow it)."""
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number, got {value!r}")
        return value


class DataConfig(_Section):
    source: str = Field(
        "synthetic",
        description="s3://bucket/prefix of a packed dataset, a local packed or raw MARS/DukeV/iLIDS-VID/PRID-2011 "
        "directory, or 'synthetic' (generated once into the cache)",
    )
    cache_dir: str = Field(DEFAULT_CACHE_ROOT, description="node-local cache for synced datasets")
    protocol: Literal["official", "torchreid"] = Field("official", description="test evaluation protocol")
    split: int = Field(
        0,
        ge=0,
        le=9,
        description="iLIDS-VID and PRID-2011: which of their 10 train/test identity splits (results are averaged "
        "over all 10); other datasets have split 0 only",
    )
    rerank: bool = Field(
        False,
        description="also report test_rank1_rerank and test_mAP_rerank: the test split ranked by k-reciprocal "
        "re-ranking (Zhong et al. 2017; k1 20, k2 6, lambda 0.3)",
    )
    val_ids: int = Field(
        8,
        ge=0,
        description="training identities held out as the validation split; 0: no validation, train on all of "
        "them (checkpoints are then kept newest first, and the run's metric is the test set)",
    )
    sampler: Literal["pk", "tracklets"] = Field(
        "pk",
        description="pk: every identity once per epoch, P x K per batch; tracklets: every tracklet once per "
        "epoch, shuffled (the official GLTR epoch; needs train.num_instances=1)",
    )
    height: int = Field(256, ge=16)
    width: int = Field(128, ge=8)
    seq_len: int = Field(16, ge=1, description="frames per training clip (T)")
    sampling: Literal["consecutive", "restricted"] = "consecutive"
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability (whole clip)")
    pad: int | None = Field(None, ge=0, description="pad-and-crop pixels; default width/12.8 (10 at 128)")
    erase_p: float = Field(0.0, ge=0, le=1, description="random erasing probability (same box on all frames)")
    test_mode: Literal["whole", "chunks", "evenly"] = "chunks"
    test_chunk_len: int = Field(64, ge=1)
    loader_workers: int = Field(2, ge=0, description="DataLoader worker processes per training worker")
    synthetic_ids: int = Field(32, ge=4, description="synthetic dataset: training identities")
    synthetic_test_ids: int = Field(12, ge=2, description="synthetic dataset: test identities")


class ModelConfig(_Section):
    backbone: str = "resnet50"
    pretrained: str | None = Field(None, description="ImageNet state-dict file, or a torchvision weights name")
    last_stride: Literal[1, 2] = 1
    frame_dim: int = Field(128, ge=1)
    dilations: tuple[int, ...] = (1, 2, 3)
    include_input: bool = True
    attention_width: int | None = Field(None, description="TSA width; default half the embedding size")
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    bnneck: bool = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {v!r}: choose one of {list(BACKBONE_NAMES)}")
        return v

    @field_validator("dilations", mode="before")
    @classmethod
    def _positive_distinct_integers(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [x for x in v.replace("(", "").replace(")", "").replace(" ", "").split(",") if x]
        if not isinstance(v, list | tuple) or not v:
            raise ValueError("dilations must be a non-empty list of positive integers, e.g. [1, 2, 3]")
        out = []
        for r in v:
            if isinstance(r, bool) or not (isinstance(r, int) or (isinstance(r, str) and r.isdigit())):
                raise ValueError(f"dilations must be positive integers, got {list(v)}")
            out.append(int(r))
        if any(r < 1 for r in out):
            raise ValueError(f"dilations must be positive integers, got {out}")
        if len(set(out)) != len(out):
            raise ValueError(f"dilations must be distinct, got {out}")
        return tuple(out)

    @field_validator("attention_width")
    @classmethod
    def _width_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"attention width must be >= 1, got {v}")
        return v


class OptimConfig(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_step: int = Field(120, ge=1, description="multiply the learning rate by lr_gamma every lr_step epochs")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    triplet_weight: float = Field(0.0, ge=0)
    triplet_margin: float | None = 0.3
    scale_lr: Literal["none", "linear"] = Field(
        "none",
        description="linear: lr x scaling.num_workers (the global batch grows with the workers); none: lr as set",
    )


class TrainLoopConfig(_Section):
    epochs: int = Field(400, ge=1)
    batch_size: int = Field(10, ge=1, description="tracklets per step per worker (P x K)")
    num_instances: int = Field(1, ge=1, description="K: tracklets per identity in a batch (pk sampler)")
    eval_every: int = Field(10, ge=1, description="validate every k epochs (and after the last)")
    seed: int = 0
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, off on CPU")
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML reads `on`/`off` as booleans: take them back as the words the user wrote."""
        if isinstance(v, bool):
            return "on" if v else "off"
        return v

    @model_validator(mode="after")
    def _batch_divisible_by_k(self) -> TrainLoopConfig:
        if self.batch_size % self.num_instances:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by num_instances (K) {self.num_instances}: "
                "a batch is P identities x K tracklets"
            )
        return self


class ScalingSection(_Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class RunSection(_Section):
    name: str | None = Field(None, description="run name (Ray Train run and MLflow run); default: generated")
    storage_path: str = Field("~/ray_results/gltr", description="checkpoints: a local directory or s3://...")
    keep_checkpoints: int = Field(2, ge=1, description="best-k checkpoints kept by validation mAP")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts before giving up (-1: forever)")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite")
    experiment: str = "gltr"


class TrainConfig(_Section):
    preset: str = "custom"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _k_belongs_to_the_pk_sampler(self) -> TrainConfig:
        if self.data.sampler == "tracklets" and self.train.num_instances != 1:
            raise ValueError(
                f"train.num_instances (K) is {self.train.num_instances}, but data.sampler 'tracklets' draws "
                "tracklets, not identities: set train.num_instances=1 or data.sampler=pk"
            )
        return self

    @property
    def p(self) -> int:
        """Identities per batch."""
        return self.train.batch_size // self.train.num_instances

    @property
    def global_batch_size(self) -> int:
        """Tracklets per optimizer step over all data-parallel workers."""
        return self.train.batch_size * self.scaling.num_workers

    @property
    def effective_lr(self) -> float:
        """The base learning rate the optimizer starts from, after `optim.scale_lr`."""
        return self.optim.lr * (self.scaling.num_workers if self.optim.scale_lr == "linear" else 1)

    def derived(self) -> dict[str, Any]:
        """What the settings amount to for this run (MLflow params next to `flat()`)."""
        return {"train.global_batch_size": self.global_batch_size, "optim.effective_lr": self.effective_lr}

    def flat(self) -> dict[str, Any]:
        """Dotted keys to scalar values, e.g. {"model.dilations": "1,2,3"}: MLflow params, tables."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump().items():
            if not isinstance(values, dict):
                out[section] = values
                continue
            for key, value in values.items():
                out[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, tuple) else value
        return out


# Presets: the official code's recipe (item by item, with sources, in docs/paper-recipe.md), a modern re-ID
# recipe, and a CPU demo that runs in minutes on 2 cores.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model": {"backbone": "resnet50", "pretrained": "IMAGENET1K_V1", "dilations": [1, 2, 3]},
        "data": {
            "height": 256,
            "width": 128,
            "seq_len": 16,
            "sampling": "consecutive",
            "sampler": "tracklets",
            "val_ids": 0,
            "flip_p": 0.0,
            "pad": 0,
            "erase_p": 0.0,
            "test_mode": "whole",
        },
        "optim": {
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "lr_step": 120,
            "lr_gamma": 0.1,
            "warmup_epochs": 0,
            "label_smoothing": 0.0,
            "triplet_weight": 0.0,
            "scale_lr": "none",
        },
        "train": {"epochs": 500, "batch_size": 10, "num_instances": 1, "amp": "off"},
        "scaling": {"use_gpu": True},
    },
    "modern": {
        "model": {"backbone": "resnet50", "pretrained": "IMAGENET1K_V1", "bnneck": True},
        "data": {"height": 256, "width": 128, "seq_len": 8, "sampling": "restricted", "erase_p": 0.5},
        "optim": {
            "optimizer": "adam",
            "lr": 3.5e-4,
            "weight_decay": 5e-4,
            "lr_step": 40,
            "warmup_epochs": 10,
            "label_smoothing": 0.1,
            "triplet_weight": 1.0,
        },
        "train": {"epochs": 120, "batch_size": 32, "num_instances": 4},
        "scaling": {"use_gpu": True},
    },
    "cpu-demo": {
        "model": {"backbone": "resnet18", "frame_dim": 32, "dilations": [1, 2, 3], "dropout": 0.2},
        "data": {
            "height": 64,
            "width": 32,
            "seq_len": 4,
            "sampling": "restricted",
            "test_mode": "evenly",
            "val_ids": 8,
            "loader_workers": 0,
        },
        "optim": {"optimizer": "adam", "lr": 3e-3, "weight_decay": 5e-4, "lr_step": 20},
        "train": {"epochs": 30, "batch_size": 8, "num_instances": 2, "eval_every": 10},
        "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "run": {"keep_checkpoints": 1},
    },
}


def _numeric(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", ())
    return annotation in (int, float) or any(a in (int, float) for a in args)


def parse_value(text: str) -> Any:
    """A `--set` value: JSON/YAML scalars and lists (`[1,2,4]`, `true`, `0.1`, `null`), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` (e.g. "model.dilations") in a nested dict; unknown sections are caught later."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key, e.g. model.dilations")
    tree.setdefault(parts[0], {})
    if not isinstance(tree[parts[0]], dict):
        raise ConfigError(f"override key {key!r}: {parts[0]!r} is not a section")
    tree[parts[0]][parts[1]] = value


def build_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset, then `base` (a nested dict, e.g. from a file), then dotted overrides; validated once."""
    tree: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
        tree = json.loads(json.dumps(PRESETS[preset]))
        tree["preset"] = preset
    for section, values in (base or {}).items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    for key, value in (overrides or {}).items():
        apply_override(tree, key, value)
    return validate_config(tree)


def validate_config(tree: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict into a TrainConfig, turning pydantic's report into one clear message."""
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_one_message(e)) from None


def _one_message(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        key = ".".join(loc) or "config"
        if item["type"] == "extra_forbidden":
            problems.append(_unknown_key(loc))
            continue
        msg = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else ""
        if shown and shown not in msg and str(value) not in msg:
            msg += f" (got {shown})"
        problems.append(f"{key}: {msg}")
    return "invalid configuration: " + "; ".join(problems)


def _unknown_key(loc: list[str]) -> str:
    sections = TrainConfig.model_fields
    if len(loc) == 1:
        return f"unknown section {loc[0]!r} (sections: {', '.join(sections)})"
    section = sections.get(loc[0])
    valid = sorted(section.annotation.model_fields) if section and hasattr(section.annotation, "model_fields") else []
    return f"unknown key {'.'.join(loc)!r} (keys of {loc[0]}: {', '.join(valid)})"
