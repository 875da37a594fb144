"""Long posts: batching every window of a post within training's memory budget; the evaluate.max_chunks param.

The counts prepare writes and evaluate/predict reading every window are tested in test_evaluate.py,
on its trained project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsm5lab.config import load_params
from dsm5lab.training.encoding import Group
from dsm5lab.training.inference import batches_by_windows


def _groups(windows_per_group: list[int]) -> list[Group]:
    empty = np.zeros(9, np.float32)
    return [Group(f"p{i}", -1, -1, [None] * n, empty, empty, np.zeros((0, 9), np.float32), n_tokens=10 * n)
            for i, n in enumerate(windows_per_group)]


def test_inference_batches_keep_the_training_window_budget():
    groups = _groups([1, 1, 2, 2, 3, 9, 40, 1, 2])
    batches = batches_by_windows(groups, batch_size=4, window_budget=2)
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    for b in batches:
        n = sum(len(groups[i].windows) for i in b)
        assert len(b) <= 4 and (n <= 8 or len(b) == 1)
    assert [6] in batches  # a post longer than the budget is a batch of its own
    # without a budget: batch_size groups in length order, as before
    assert batches_by_windows(groups, 4, None) == [[0, 1, 7, 2], [3, 8, 4, 5], [6]]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_evaluate_max_chunks_must_be_positive(tmp_path, value):
    from dsm5lab.errors import UserError

    with pytest.raises(UserError, match="evaluate.max_chunks"):
        load_params(Path(__file__).resolve().parents[1] / "params.yaml", [f"evaluate.max_chunks={value}"])
