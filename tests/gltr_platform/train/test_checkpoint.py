"""Checkpoint state files: an exact round trip, a clear CheckpointError for a damaged one, and resuming
past a damaged latest checkpoint from the newest earlier one in the run's storage."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import ray.train
import torch

from gltr_platform.train.checkpoint import (
    CHECKSUM_FILE,
    STATE_FILE,
    CheckpointError,
    epoch_dir_name,
    load_resumable_state,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
    stored_checkpoints,
)


def training_state() -> dict:
    """What the loop saves, in miniature: a model, an optimizer that has stepped, counters, RNGs."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {
        "epoch": 7,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": {"epoch": 7, "seed": 3},
        "rng": [rng_state()],
        "best_val": 0.42,
        "config": {"model": {"dilations": [1, 2, 3]}},
    }


def draws() -> tuple[float, list[float], list[float]]:
    """The next values of the python, numpy and torch random streams."""
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_saved_state_loads_back_identically(tmp_path):
    state = training_state()

    path = save_state(tmp_path, state)
    loaded = load_state(tmp_path)

    assert path == tmp_path / STATE_FILE
    assert loaded["epoch"] == 7 and loaded["best_val"] == 0.42 and loaded["sampler"] == state["sampler"]
    assert loaded["config"] == state["config"]
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert loaded["optimizer"]["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_saving_leaves_only_the_state_file_and_its_checksum(tmp_path):
    save_state(tmp_path, training_state())
    save_state(tmp_path, training_state())  # overwriting is a rename too

    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, CHECKSUM_FILE]


def test_a_truncated_state_file_raises_checkpoint_error_naming_the_file(tmp_path):
    path = save_state(tmp_path, training_state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert str(path) in str(caught.value) and "unreadable" in str(caught.value)


def test_a_flipped_byte_that_torch_would_still_load_is_caught_by_the_checksum(tmp_path):
    path = save_state(tmp_path, training_state())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # lands in tensor data: torch.load reads it back without complaint
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert str(path) in str(caught.value) and "sha256" in str(caught.value)


def test_a_state_file_saved_without_a_checksum_still_loads(tmp_path):
    save_state(tmp_path, training_state())
    (tmp_path / CHECKSUM_FILE).unlink()  # as written before checksums were

    assert load_state(tmp_path)["epoch"] == 7


def test_an_empty_state_file_raises_checkpoint_error_naming_the_file(tmp_path):
    (tmp_path / STATE_FILE).write_bytes(b"")

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert str(tmp_path / STATE_FILE) in str(caught.value)


def test_a_directory_without_a_state_file_raises_checkpoint_error(tmp_path):
    (tmp_path / "other.pt").write_bytes(b"x")

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert str(tmp_path) in str(caught.value) and STATE_FILE in str(caught.value)


@pytest.mark.parametrize("state", [[1, 2, 3], {"model": {}}, {"epoch": 1}])
def test_a_readable_file_that_is_not_a_training_state_is_refused(tmp_path, state):
    torch.save(state, tmp_path / STATE_FILE)

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert "does not hold a GLTR training state" in str(caught.value)


def test_restoring_rng_state_replays_the_python_numpy_and_torch_streams_exactly():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draws()  # somewhere in the middle of every stream
    saved = rng_state()
    expected = draws()

    draws()
    set_rng_state(saved)

    assert draws() == expected


def test_rng_state_survives_a_trip_through_a_checkpoint_file(tmp_path):
    torch.manual_seed(5)
    state = training_state()
    state["rng"] = [rng_state()]
    expected = draws()
    save_state(tmp_path, state)

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_state(tmp_path)["rng"][0])

    assert draws() == expected


def store_run(storage: Path, epochs: list[int], damaged: list[int]) -> ray.train.Checkpoint:
    """A run's storage holding epoch-NNNN checkpoints, some truncated; the latest as Ray Train hands it over."""
    for epoch in epochs:
        (storage / epoch_dir_name(epoch)).mkdir()
        path = save_state(storage / epoch_dir_name(epoch), training_state() | {"epoch": epoch})
        if epoch in damaged:
            path.write_bytes(path.read_bytes()[:1000])
    (storage / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file sits beside them
    return ray.train.Checkpoint(str(storage / epoch_dir_name(max(epochs))))


@pytest.fixture
def storage(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def test_resuming_from_a_sound_checkpoint_loads_that_checkpoint(storage):
    latest = store_run(storage, [1, 2, 3], damaged=[])

    state, chosen = load_resumable_state(latest)

    assert state["epoch"] == 3 and chosen is latest


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_earlier_one_that_loads(storage, caplog):
    latest = store_run(storage, [1, 2, 3, 4], damaged=[3, 4])

    with caplog.at_level(logging.WARNING, logger="gltr_platform.train.checkpoint"):
        state, chosen = load_resumable_state(latest)

    assert state["epoch"] == 2 and Path(chosen.path).name == "epoch-0002"
    assert len(caplog.records) == 1
    warning = caplog.records[0].getMessage()
    assert str(storage / "epoch-0004") in warning and "epoch-0002" in warning and "after epoch 2" in warning


def test_resuming_fails_clearly_when_no_stored_checkpoint_loads(storage):
    latest = store_run(storage, [1, 2], damaged=[1, 2])

    with pytest.raises(CheckpointError) as caught:
        load_resumable_state(latest)

    message = str(caught.value)
    assert f"no checkpoint in the run's storage {storage} can be loaded" in message
    assert "epoch-0001: " in message and "epoch-0002: " in message  # why each one was refused
    assert "new name" in message  # and what to do about it


def test_stored_checkpoints_are_listed_newest_first_and_only_checkpoint_directories(storage):
    latest = store_run(storage, [1, 3, 2], damaged=[])
    (storage / epoch_dir_name(2, {"epoch-0002"})).mkdir()
    (storage / "driver_artifacts").mkdir()

    assert stored_checkpoints(latest) == ["epoch-0003", "epoch-0002-1", "epoch-0002", "epoch-0001"]


def test_a_re_trained_epoch_gets_a_directory_of_its_own():
    assert epoch_dir_name(3) == "epoch-0003"
    assert epoch_dir_name(3, {"epoch-0003", "epoch-0004"}) == "epoch-0003-1"
    assert epoch_dir_name(3, {"epoch-0003", "epoch-0003-1"}) == "epoch-0003-2"
    assert epoch_dir_name(5, {"epoch-0003", "epoch-0004"}) == "epoch-0005"
