"""The metric's any_severe_spinal term in the training loss (`any_severe_weight`): the term is the metric's on
the same probabilities, batches hold whole studies, weight 0 trains as before, and a run with it trains end to
end in the competition mode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config

from lumbar.core.constants import GRADES, LEVELS
from lumbar.scoring.metric import score_aligned
from lumbar.train import loop, losses
from lumbar.train.config import make_config
from lumbar.train.loop import any_severe_unit, train
from lumbar.train.losses import ANY_SEVERE, any_severe_term, build_loss
from lumbar.train.mixing import Mixed, mixed_loss
from lumbar.train.sampling import StudyBatchSampler, make_study_batch_sampler
from lumbar.train.tasks import build_tasks

pytestmark = pytest.mark.usefixtures("tiny_model")

SCS = "spinal_canal_stenosis"


def _batch():
    """Four studies' spinal crops, shuffled: study 10 has a Severe level, 11 a Moderate one at most, 12 only
    Normal/Mild, 13 a Severe level without a label (left out, as the metric leaves it)."""
    grades = [
        (10, [0, 2, 1, 0, 0]),
        (11, [0, 1, 0, 1, 0]),
        (12, [0, 0, 0, 0, 0]),
        (13, [0, 1, -1, 0]),
    ]
    rows = [(s, LEVELS[i], g) for s, gs in grades for i, g in enumerate(gs)]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    torch.manual_seed(0)
    logits = 1.5 * torch.randn(len(rows), 1, 3)
    target = torch.tensor([[g] for _, _, g in rows])
    weights = torch.tensor([1.0, 2.0, 4.0])[target.clamp_min(0)] * (target >= 0)
    study = torch.tensor([s for s, _, _ in rows])
    return rows, logits, target, weights, study


def test_the_term_is_the_metrics_any_severe_spinal_term_on_the_same_probabilities():
    rows, logits, target, weights, study = _batch()
    probs = torch.softmax(logits.double(), -1)[:, 0].numpy()
    table = pd.DataFrame(
        [(s, SCS, lv, g, *p) for (s, lv, g), p in zip(rows, probs) if g >= 0],
        columns=["study_id", "condition", "level", "grade", *GRADES],
    )
    expected = score_aligned(table).any_severe_spinal
    term = any_severe_term(logits, target, weights, study)
    assert float(term) == pytest.approx(expected, rel=1e-5)
    base = build_loss("ce")
    both = build_loss(ANY_SEVERE, base=base, weight=0.7)(logits, target, weights, study)
    assert float(both) == pytest.approx(float(base(logits, target, weights)) + 0.7 * expected, rel=1e-5)
    logits.requires_grad_(True)
    any_severe_term(logits, target, weights, study).backward()
    assert logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()


def test_a_confident_model_gives_a_finite_term():
    logits = torch.tensor([[[0.0, 0.0, 80.0]], [[80.0, 0.0, 0.0]]])
    term = any_severe_term(
        logits, torch.tensor([[2], [0]]), torch.tensor([[4.0], [1.0]]), torch.tensor([0, 1])
    )
    assert torch.isfinite(term) and float(term) < 1e-6


def test_a_mixed_batch_adds_the_partners_term_grouped_by_the_partners_studies():
    _, logits, target, weights, study = _batch()
    perm = torch.from_numpy(np.random.default_rng(1).permutation(len(study)))
    loss_fn = build_loss(ANY_SEVERE, base=build_loss("ce"), weight=1.0)
    mixed = mixed_loss(loss_fn, logits, target, weights, Mixed(logits, logits, 0.3, perm), study)
    own = loss_fn(logits, target, weights, study)
    partner = loss_fn(logits, target[perm], weights[perm], study[perm])
    assert float(mixed) == pytest.approx(float(0.3 * own + 0.7 * partner), rel=1e-6)


def test_study_batches_hold_whole_studies_and_every_study_once_an_epoch():
    sizes = [5, 5, 3, 5, 1, 4, 5, 5, 2, 5, 5]
    studies = np.repeat(np.arange(len(sizes)) * 7, sizes)
    studies = studies[np.random.default_rng(0).permutation(len(studies))]
    sampler = StudyBatchSampler(studies, batch_size=11, seed=3)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 6  # 11 studies, 2 a batch
        assert all(len(b) <= 11 for b in batches)
        seen = [studies[b] for b in batches]
        assert sorted(np.concatenate(batches)) == list(range(len(studies)))  # every item once
        for batch in seen:
            for s in set(batch):
                assert (batch == s).sum() == (studies == s).sum()  # the whole study in this batch
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_study_batches_shard_over_ranks_balance_and_refuse_a_batch_below_a_study():
    studies = np.repeat(np.arange(9), 5)
    ranks = [StudyBatchSampler(studies, 10, num_replicas=2, rank=r, seed=1, drop_last=True) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(4)
    drawn = [list(r) for r in ranks]
    assert [len(d) for d in drawn] == [2, 2] and all(len(b) == 10 for d in drawn for b in d)
    assert not set(np.concatenate(drawn[0])) & set(
        np.concatenate(drawn[1])
    )  # 4 distinct batches of 2 studies
    grades = np.repeat([2, 0, 0, 0, 0, 0, 0, 0, 0], 5)
    balanced = make_study_batch_sampler(studies, 45, True, grades, 1, 0, 0, False)
    draws = np.concatenate(
        [studies[b] for e in range(40) for b in (balanced.set_epoch(e), list(balanced))[1]]
    )
    assert np.mean(draws == 0) == pytest.approx(
        0.5, abs=0.1
    )  # the one study with a Severe level, half the draws
    with pytest.raises(ValueError, match="batch_size=4 cannot hold a whole study of 5"):
        StudyBatchSampler(studies, 4)


def test_the_option_is_the_competition_spinal_units_and_refused_elsewhere():
    spinal, foraminal = build_tasks("competition", ("scs", "lnfn"))
    on, off = make_config({"any_severe_weight": 0.5}), make_config({})
    assert any_severe_unit(on, spinal) and not any_severe_unit(on, foraminal)
    assert not any_severe_unit(off, spinal)
    with pytest.raises(ValueError, match="mode='single_multiclass' has none"):
        make_config({"any_severe_weight": 0.5, "mode": "single_multiclass", "cache": "c"}).check()
    with pytest.raises(ValueError, match="expected >= 0"):
        make_config({"any_severe_weight": -1, "cache": "c"}).check()
    with pytest.raises(ValueError, match="set loss to ce or focal"):
        make_config({"loss": ANY_SEVERE, "cache": "c"}).check()


def _history(result, unit="spinal"):
    return pd.read_csv(result.run_dir / unit / "fold0" / "history.csv")


def test_weight_zero_trains_exactly_as_without_the_option(tiny, tmp_path, monkeypatch):
    """The reference run takes the loop's paths of before (the plain sampler, the base loss, no study index)
    whatever `any_severe_unit` says; a run with weight 0 must be that run, sample for sample and bit for bit."""
    common = {"mix": "mixup", "mix_p": 0.5, "record_samples": True, "folds_csv": str(tmp_path / "folds.csv")}
    zero = train(engine_config(tiny, tmp_path / "zero" / "run", any_severe_weight=0.0, **common))
    monkeypatch.setattr(loop, "any_severe_unit", lambda config, task: False)
    before = train(engine_config(tiny, tmp_path / "before" / "run", **common))
    pd.testing.assert_frame_equal(pd.read_csv(before.oof_path), pd.read_csv(zero.oof_path), check_exact=True)
    assert list(_history(before)["train_loss"]) == list(_history(zero)["train_loss"])
    seen = [
        json.loads((r.run_dir / "spinal" / "fold0" / "samples_seen.json").read_text()) for r in (before, zero)
    ]
    assert seen[0] == seen[1]


def test_a_run_with_the_term_batches_whole_studies_end_to_end(tiny, tmp_path, monkeypatch):
    calls = []

    def spy(logits, targets, weights, study):
        calls.append(study.tolist())
        return term(logits, targets, weights, study)

    term = losses.any_severe_term
    monkeypatch.setattr(losses, "any_severe_term", spy)
    common = {"conditions": "scs,lnfn", "batch_size": 10, "folds_csv": str(tmp_path / "folds.csv")}
    plain = train(engine_config(tiny, tmp_path / "plain" / "run", **common))
    assert not calls
    on = train(engine_config(tiny, tmp_path / "on" / "run", any_severe_weight=1.0, **common))
    folds = pd.read_csv(tmp_path / "folds.csv")
    n_train = int((folds["fold"] != 0).sum())
    per_epoch = n_train // 2  # 2 studies of 5 levels a batch, the incomplete last one dropped
    assert per_epoch >= 2 and len(calls) == 2 * per_epoch
    for epoch in (calls[:per_epoch], calls[per_epoch:]):
        assert len({s for batch in epoch for s in batch}) == 2 * per_epoch  # no study in two batches
        assert all(sorted(batch.count(s) for s in set(batch)) == [5, 5] for batch in epoch)
    oof = pd.read_csv(on.oof_path)
    assert np.allclose(oof[list(GRADES)].sum(axis=1), 1.0) and np.isfinite(on.oof_score["any_severe_spinal"])
    assert not np.allclose(_history(plain)["train_loss"], _history(on)["train_loss"])
    pd.testing.assert_frame_equal(_history(plain, "foraminal"), _history(on, "foraminal").assign(
        seconds=_history(plain, "foraminal")["seconds"], data_s=_history(plain, "foraminal")["data_s"],
        model_s=_history(plain, "foraminal")["model_s"]))  # fmt: skip
    mixed = train(engine_config(tiny, tmp_path / "mixed" / "run", any_severe_weight=1.0, mix="mixup,cutmix",
                                mix_p=1.0, balanced_sampling=True, epochs=1, **common))  # fmt: skip
    assert (
        np.isfinite(_history(mixed)["train_loss"]).all() and len(calls) == 4 * per_epoch
    )  # own and partner part


def test_the_two_step_schedule_trains_unweighted_then_weighted_with_the_term(tiny, tmp_path, monkeypatch):
    """`weighted_from_epoch` 2 of 2 epochs: epoch 1 is the unweighted run's epoch 1 bit for bit (grade weights
    1, no term, the same whole-study batches); epoch 2 adds the weights and the term (5th place's schedule)."""
    calls = []

    def spy(logits, targets, weights, study):
        calls.append(weights.max().item())
        return term(logits, targets, weights, study)

    term = losses.any_severe_term
    monkeypatch.setattr(losses, "any_severe_term", spy)
    common = {"conditions": "scs", "batch_size": 10, "any_severe_weight": 1.0,
              "folds_csv": str(tmp_path / "folds.csv")}  # fmt: skip
    unweighted = train(engine_config(tiny, tmp_path / "u" / "run", class_weights=(1, 1, 1),
                                     weighted_from_epoch=3, **common))  # fmt: skip
    assert not calls  # never weighted in its 2 epochs
    two = train(engine_config(tiny, tmp_path / "two" / "run", weighted_from_epoch=2, **common))
    per_epoch = len(calls)
    assert per_epoch >= 2  # the term in epoch 2 only, on the metric's weights
    loss_u, loss_two = _history(unweighted)["train_loss"], _history(two)["train_loss"]
    assert loss_u[0] == loss_two[0] and loss_u[1] != loss_two[1]
    weighted = train(engine_config(tiny, tmp_path / "w" / "run", **common))
    assert len(calls) == 3 * per_epoch and _history(weighted)["train_loss"][0] != loss_two[0]
    with pytest.raises(ValueError, match="weighted_from_epoch=0"):
        make_config({"weighted_from_epoch": 0, "cache": "c"}).check()
