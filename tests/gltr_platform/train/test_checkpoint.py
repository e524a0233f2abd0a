"""Checkpoint state files: an exact round trip, and a clear CheckpointError for a damaged one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gltr_platform.train.checkpoint import (
    STATE_FILE,
    CheckpointError,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
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


def test_saving_leaves_only_the_state_file(tmp_path):
    save_state(tmp_path, training_state())
    save_state(tmp_path, training_state())  # overwriting is a rename too

    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_a_truncated_state_file_raises_checkpoint_error_naming_the_file(tmp_path):
    path = save_state(tmp_path, training_state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)

    assert str(path) in str(caught.value) and "unreadable" in str(caught.value)


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
