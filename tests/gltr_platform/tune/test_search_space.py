"""Search-space checks that run before a sweep starts anything (no Ray)."""

from __future__ import annotations

import pytest

from gltr_platform.train.config import ConfigError, build_config
from gltr_platform.tune.search_space import check_sweepable, load_search_space


def test_a_sweep_needs_a_validation_split_to_rank_its_trials(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("dilations: [[1, 2, 3]]\nseq_len: [4]\nattention_width: [16]\n")
    paper = build_config("paper")

    with pytest.raises(ConfigError, match="data.val_ids is 0"):
        check_sweepable(paper)
    with pytest.raises(ConfigError, match="validation mAP"):
        load_search_space(space, paper)
    check_sweepable(build_config("paper", {"data.val_ids": 8}))
    assert load_search_space(space, build_config("cpu-demo")).seq_len == [4]
