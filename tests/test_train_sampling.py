"""The grade-balanced training sampler: each grade drawn about equally often, every epoch's order a function of
(seed, epoch) only, ranks sharing one draw; and the training loop using it when `balanced_sampling` is on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _train_data import engine_config, make_tiny_data
from torch.utils.data import DistributedSampler

from lumbar.core.tables import load_labels
from lumbar.train.loop import train
from lumbar.train.sampling import BalancedDistributedSampler, balanced_weights, make_train_sampler

pytestmark = pytest.mark.usefixtures("tiny_model")

#: 300 items graded 70 / 20 / 10 %, and 30 more without a label.
GRADES_OF_ITEMS = np.array([0] * 210 + [1] * 60 + [2] * 30 + [-1] * 30)


def _epoch(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_weights_are_the_inverse_frequency_of_each_grade_and_zero_without_one():
    w = balanced_weights(GRADES_OF_ITEMS)
    assert w[0] == pytest.approx(1 / 210) and w[210] == pytest.approx(1 / 60) and w[270] == pytest.approx(1 / 30)
    assert (w[300:] == 0).all()
    assert [w[GRADES_OF_ITEMS == g].sum() for g in range(3)] == pytest.approx([1, 1, 1])


def test_each_grade_is_drawn_about_equally_often_and_unlabelled_items_never():
    """Five epochs of 330 draws: each grade's share within 0.05 of a third (its standard error is 0.012),
    where the plain shuffled sampler gives the items' own 0.64 / 0.18 / 0.09 / 0.09."""
    data = list(range(len(GRADES_OF_ITEMS)))
    balanced = make_train_sampler(data, True, GRADES_OF_ITEMS, world_size=1, rank=0, seed=0)
    plain = make_train_sampler(data, False, GRADES_OF_ITEMS, world_size=1, rank=0, seed=0)
    assert isinstance(balanced, BalancedDistributedSampler) and not isinstance(plain, BalancedDistributedSampler)
    drawn = np.concatenate([_epoch(balanced, e) for e in range(1, 6)])
    assert len(drawn) == 5 * len(data) and len(np.unique(drawn)) < len(data)  # with replacement
    grades = GRADES_OF_ITEMS[drawn]
    assert (grades >= 0).all()
    assert [np.mean(grades == g) for g in range(3)] == pytest.approx([1 / 3] * 3, abs=0.05)
    assert sorted(_epoch(plain, 1)) == data  # plain: a permutation, the items' own shares


def test_an_epochs_order_depends_on_seed_and_epoch_only():
    data = list(range(len(GRADES_OF_ITEMS)))
    weights = balanced_weights(GRADES_OF_ITEMS)
    first = BalancedDistributedSampler(data, weights, seed=3)
    again = BalancedDistributedSampler(data, weights, seed=3)
    orders = [_epoch(first, e) for e in (1, 2, 3)]
    assert _epoch(again, 2) == orders[1] and _epoch(again, 1) == orders[0]  # any order of set_epoch calls
    assert _epoch(first, 2) == orders[1]  # drawing again does not move on
    assert orders[0] != orders[1] != orders[2]
    assert _epoch(BalancedDistributedSampler(data, weights, seed=4), 1) != orders[0]


def test_ranks_split_one_draw_between_them():
    data = list(range(len(GRADES_OF_ITEMS)))
    weights = balanced_weights(GRADES_OF_ITEMS)
    ranks = [BalancedDistributedSampler(data, weights, num_replicas=3, rank=r, seed=5) for r in range(3)]
    shards = [_epoch(s, 2) for s in ranks]
    assert [len(s) for s in shards] == [len(ranks[0])] * 3 == [110] * 3
    together = _epoch(BalancedDistributedSampler(data, weights, num_replicas=1, seed=5), 2)
    assert sorted(i for shard in shards for i in shard) == sorted(together)  # one draw, shared out
    assert shards[0] != shards[1] != shards[2]


def test_bad_weights_are_an_error():
    with pytest.raises(ValueError, match="one non-negative value per sample"):
        BalancedDistributedSampler(list(range(3)), np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="one non-negative value per sample"):
        BalancedDistributedSampler(list(range(3)), np.zeros(3))
    assert type(make_train_sampler(list(range(3)), False, None, 1, 0, 0)) is DistributedSampler


def _seen_grades(run_dir, labels) -> tuple[dict[str, list[str]], np.ndarray]:
    seen = json.loads((run_dir / "spinal" / "fold0" / "samples_seen.json").read_text())
    grade_of = dict(zip(labels["study_id"].astype(str) + "_" + labels["condition"] + "_" + labels["level"],
                        labels["grade"]))  # fmt: skip
    ids = {epoch: ranks["0"] for epoch, ranks in seen.items()}
    return ids, np.array([grade_of[i] for epoch in ids.values() for i in epoch])


def test_the_training_loop_draws_balanced_batches_when_asked(tmp_path):
    """16 tiny studies, fold 0's spinal unit (40 training items, 50 / 30 / 20 % by grade), 6 epochs of 40
    samples: with `balanced_sampling` each grade makes about a third of the samples seen (standard error
    0.03), and a rerun sees the same ones; without, each epoch sees every training item once."""
    tiny = make_tiny_data(tmp_path / "data", n_studies=16)
    labels = load_labels(tiny[0] / "train.csv")
    common = {"epochs": 6, "folds": "0", "record_samples": True}
    plain = train(engine_config(tiny, tmp_path / "plain" / "run", **common))
    folds = str(tmp_path / "plain" / "folds.csv")
    balanced = [train(engine_config(tiny, tmp_path / f"balanced{k}" / "run", **common, balanced_sampling=True,
                                    folds_csv=folds)) for k in (0, 1)]  # fmt: skip
    plain_ids, plain_grades = _seen_grades(plain.run_dir, labels)
    ids, grades = _seen_grades(balanced[0].run_dir, labels)
    assert ids == _seen_grades(balanced[1].run_dir, labels)[0]
    assert all(sorted(epoch) == sorted(plain_ids["1"]) for epoch in plain_ids.values())
    assert any(len(set(epoch)) < len(epoch) for epoch in ids.values())  # drawn with replacement
    shares, plain_shares = ([np.mean(g == k) for k in range(3)] for g in (grades, plain_grades))
    assert plain_shares == pytest.approx([0.5, 0.3, 0.2])  # the training items' own
    assert shares == pytest.approx([1 / 3] * 3, abs=0.08), shares  # measured 0.34 / 0.35 / 0.30
