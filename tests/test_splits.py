"""Post-disjoint multi-label stratified splits and folds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm5lab.data.splits import check_disjoint, iterative_stratify, make_splits

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def random_labels(n: int, freqs: list[float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(freqs))) < np.array(freqs)).astype(np.int8)


def test_proportions_and_label_balance():
    labels = random_labels(1500, [0.22, 0.2, 0.1, 0.08, 0.04, 0.03, 0.025], seed=0)
    split, fold = make_splits(labels, RATIOS, n_folds=5, seed=42)
    for name, ratio in RATIOS.items():
        share = np.mean(split == name)
        assert abs(share - ratio) < 0.01, (name, share)
        for j in range(labels.shape[1]):
            part_share = labels[split == name, j].sum() / labels[:, j].sum()
            assert abs(part_share - ratio) < 0.05, (name, j, part_share)
    sizes = np.bincount(fold[fold >= 0])
    assert sizes.max() - sizes.min() <= 0.05 * sizes.mean()
    assert (fold[split == "test"] == -1).all() and (fold[split != "test"] >= 0).all()


# derandomize: the same 300 cases on every run, so CI cannot go red on a case no run saw before; the one
# known failing case a random run found is pinned below as a strict xfail until repair_coverage handles it
@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    n=st.integers(min_value=20, max_value=200),
    freqs=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=10_000),
    k=st.integers(min_value=2, max_value=6),
)
def test_every_label_with_enough_positives_reaches_every_split_and_fold(n, freqs, seed, k):
    """With exactly as many positives as parts coverage can be infeasible (three labels on
    three posts pairwise: no 2-colouring), so the property is checked from 2 x parts up."""
    labels = random_labels(n, freqs, seed)
    split, fold = make_splits(labels, RATIOS, n_folds=k, seed=seed)
    check_disjoint([f"p{i}" for i in range(n)], split.tolist(), fold.tolist())
    for j in range(labels.shape[1]):
        if labels[:, j].sum() >= 2 * len(RATIOS):
            for name in RATIOS:
                assert labels[split == name, j].any(), (j, name)
        pool = split != "test"
        if labels[pool, j].sum() >= 2 * k:
            for f in range(k):
                assert labels[fold == f, j].any(), (j, f)


@pytest.mark.xfail(strict=True, reason="repair_coverage cycles when a fold holds one post: 16 pool posts in 6 "
                   "folds, a label on 12 of them misses fold 1 whatever the number of passes (found by hypothesis)")
def test_a_label_on_most_of_a_tiny_pool_reaches_a_one_post_fold():
    labels = random_labels(20, [0.4375, 0.125, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5], seed=6)
    split, fold = make_splits(labels, RATIOS, n_folds=6, seed=6)
    assert labels[(split != "test") & (fold == 1), 2].any()


def test_same_seed_same_split_other_seed_differs():
    labels = random_labels(300, [0.3, 0.1, 0.05], seed=1)
    a = make_splits(labels, RATIOS, 5, seed=7)
    b = make_splits(labels, RATIOS, 5, seed=7)
    c = make_splits(labels, RATIOS, 5, seed=8)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[0] == c[0]).all()


def test_singleton_labels_do_not_all_land_in_train():
    labels = np.eye(8, dtype=np.int8)
    part = iterative_stratify(labels, [0.5, 0.25, 0.25], np.random.default_rng(0))
    assert sorted(np.bincount(part, minlength=3).tolist()) == [2, 2, 4]


@pytest.mark.parametrize(
    "ids,split,fold,message",
    [
        (["a", "a"], ["train", "test"], [0, -1], "more than once"),
        (["a", "b"], ["train", "test"], [0, 1], "has fold 1"),
        (["a", "b"], ["val", "test"], [-1, -1], "has fold -1"),
    ],
)
def test_leakage_check_fires(ids, split, fold, message):
    with pytest.raises(RuntimeError, match=message):
        check_disjoint(ids, split, fold)


def test_repair_fills_a_part_that_stratification_left_empty():
    # label 1 has three positives, all initially in part 0
    labels = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0], [1, 0]], dtype=np.int8)
    from dsm5lab.data.splits import repair_coverage

    fixed = repair_coverage(labels, np.array([0, 0, 0, 1, 1, 2]), 3)
    assert {int(p) for p in fixed[labels[:, 1] == 1]} == {0, 1, 2}


def label_distribution(labels: np.ndarray, part: np.ndarray, k: int) -> float:
    """Sechidis et al.'s LD: mean over labels and parts of |positive:negative ratio in part - in the whole|."""
    pos, n = labels.sum(0), len(labels)
    per_part = [labels[part == i].sum(0) / ((part == i).sum() - labels[part == i].sum(0)) for i in range(k)]
    return float(np.mean(np.abs(np.array(per_part) - pos / (n - pos))))


@pytest.mark.parametrize("seed", range(4))
def test_stratifier_cross_checked_against_iterative_stratification(seed):
    """Ours next to the `iterative-stratification` package (same algorithm): as even per label, up to a small
    factor (measured 1.1-2x its LD on these inputs), and far more even than a random assignment (5-8x).
    Ours is kept for its coverage repair and the val/test ratios; folds are where the two can be compared."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    rng = np.random.default_rng(seed)
    prevalence = np.array([328, 124, 44, 102, 35, 124, 311, 59, 165]) / 1484  # ReDSM5's posts per criterion
    labels = (rng.random((600, 9)) < prevalence * rng.uniform(0.5, 1.5, 9)).astype(np.int8)
    ours = iterative_stratify(labels, [0.2] * 5, np.random.default_rng(seed))
    theirs = np.empty(len(labels), dtype=int)
    folds = MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(labels, labels)
    for i, (_, held) in enumerate(folds):
        theirs[held] = i
    random = rng.integers(0, 5, len(labels))
    assert np.bincount(ours).tolist() == np.bincount(theirs).tolist() == [120] * 5
    ld_ours, ld_theirs = label_distribution(labels, ours, 5), label_distribution(labels, theirs, 5)
    assert ld_ours <= 2.5 * ld_theirs
    assert ld_ours <= 0.4 * label_distribution(labels, random, 5)
