"""Test-time augmentation (chosen fold-wise per unit) and batch mixing (mixup, CutMix) in the one training engine."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config

from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.runtime import setup_runtime, teardown_runtime
from lumbar.train.loop import train
from lumbar.train.losses import build_loss
from lumbar.train.mixing import BatchMix, Mixed, cutmix, mixed_loss, mixup
from lumbar.train.predict import predict_cache, predict_probs
from lumbar.train.tasks import build_tasks
from lumbar.train.tta import candidate_sets, choose_fold_wise, combine, shift, tta_report, tta_views, usable

pytestmark = pytest.mark.usefixtures("tiny_model")


def _config(tiny, out, **overrides):
    return engine_config(tiny, out, **{"folds": "0,1", **overrides})


def _oof(result) -> pd.DataFrame:
    return pd.read_csv(result.oof_path)


def _final_weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result.run_dir / "spinal" / "fold0" / "final.pt", weights_only=True)


# --- test-time augmentation ------------------------------------------------------------------------------------


def test_views_reverse_the_slices_and_shift_in_plane():
    x = torch.arange(2 * 1 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 1, 3, 4, 4)
    (reverse,) = tta_views(["reverse_slices"], identity=False)
    assert torch.equal(reverse(x)[:, :, 0], x[:, :, 2])
    moved = shift(x, 1, 0)  # down one row, the top row replicated
    assert torch.equal(moved[..., 1:, :], x[..., :-1, :]) and torch.equal(moved[..., 0, :], x[..., 0, :])
    moved = shift(x, 0, -1)  # left one column
    assert torch.equal(moved[..., :, :-1], x[..., :, 1:]) and torch.equal(moved[..., :, -1], x[..., :, -1])
    identity, *rest = tta_views(["shifts"])
    assert identity(x) is x and len(rest) == 2
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        tta_views(["flip_upside_down"])
    both = ["reverse_slices", "shifts"]  # a foramen's slices run outwards from the canal: no reversal there
    spinal, foraminal, subarticular = build_tasks("competition")
    assert usable(both, spinal.crop_kinds) == usable(both, subarticular.crop_kinds) == tuple(both)
    assert usable(both, foraminal.crop_kinds) == ("shifts",)
    # nor for a recess seen on the Sagittal T2 slice through it; the axial view of the canal keeps both
    spinal, _, subarticular = build_tasks("competition", views=["axial_canal", "parasagittal_recess"])
    assert usable(both, spinal.crop_kinds) == tuple(both) and usable(both, subarticular.crop_kinds) == ("shifts",)


class _Linear(torch.nn.Module):
    """(B, 1, 3, 8, 8) -> 2 targets x 3 classes, sensitive to slice order and position."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 6)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_a_tta_set_is_the_mean_over_all_its_views():
    """`combine` of the per-entry means equals predicting with every view at once."""
    torch.manual_seed(0)
    forward = _Linear()
    runtime = setup_runtime("cpu", amp=False, channels_last=False, threads=1)
    try:
        batches = [{"image": torch.rand(5, 1, 3, 8, 8), "meta": torch.zeros(5, 0), "index": torch.arange(5)}]
        per_entry = {e: predict_probs(forward, batches, runtime, 2, 3, tta=tta_views([e], identity=False))[1]
                     for e in ("identity", "reverse_slices", "shifts")}
        together = predict_probs(forward, batches, runtime, 2, 3, tta=tta_views(["reverse_slices", "shifts"]))[1]
        np.testing.assert_allclose(combine(per_entry, ("reverse_slices", "shifts")), together, rtol=1e-5)
        assert not np.allclose(per_entry["identity"], together)
        plain = predict_probs(forward, batches, runtime, 2, 3)[1]
        assert np.array_equal(plain, predict_probs(forward, batches, runtime, 2, 3, tta=tta_views(["identity"]))[1])
    finally:
        teardown_runtime(runtime)


def test_the_tta_choice_of_a_fold_never_sees_that_folds_rows():
    """Fold 0's own rows favour reverse_slices strongly; the others favour the plain prediction: fold 0 gets the
    plain one (chosen on the other folds), the other folds and the test set follow the evidence they may see."""
    assert candidate_sets(["shifts", "reverse_slices"]) == [(), ("shifts",), ("reverse_slices",),
                                                            ("shifts", "reverse_slices")]
    scores = {(): {0: 0.90, 1: 0.50, 2: 0.50}, ("reverse_slices",): {0: 0.10, 1: 0.55, 2: 0.56}}
    per_fold, test = choose_fold_wise(scores, higher_is_better=False)
    assert per_fold == {0: (), 1: ("reverse_slices",), 2: ("reverse_slices",)}
    assert test == ("reverse_slices",)  # mean 0.403 vs 0.633 over all folds
    assert choose_fold_wise({(): {0: 0.5}, ("shifts",): {0: 0.4}}, False) == ({0: ()}, ("shifts",))


def test_tta_with_the_identity_equals_no_tta(tiny, tmp_path):
    plain = train(_config(tiny, tmp_path / "plain" / "run"))
    folds = str(tmp_path / "plain" / "folds.csv")
    same = train(_config(tiny, tmp_path / "same" / "run", tta="identity", folds_csv=folds))
    pd.testing.assert_frame_equal(_oof(plain), _oof(same), check_exact=True)
    _, cache_dir = tiny
    pd.testing.assert_frame_equal(predict_cache(plain.run_dir, cache_dir, device="cpu"),
                                  predict_cache(same.run_dir, cache_dir, device="cpu"), check_exact=True)


def _choose_by_hand(scores: dict[str, dict[int, float]]) -> tuple[dict[int, str], str]:
    """The lowest-loss TTA set (named as result.json names it) of each fold on the other folds' mean score, and
    of the test predictions on every fold's; ties go to the set of fewer entries, then to the first listed."""
    def best(on: list[int]) -> str:
        return min(scores, key=lambda name: (np.mean([scores[name][f] for f in on]),
                                             0 if name == "identity" else len(name.split("+"))))  # fmt: skip

    folds = sorted(next(iter(scores.values())))
    return {f: best([g for g in folds if g != f]) for f in folds}, best(folds)


def test_choose_fold_wise_matches_a_choice_by_hand_on_random_scores():
    rng = np.random.default_rng(0)
    names = ["identity", "shifts", "reverse_slices", "reverse_slices+shifts"]
    for trial in range(200):
        folds = range(int(rng.integers(2, 6)))
        scores = {n: {f: float(rng.choice([0.5, 0.6, rng.random()])) for f in folds} for n in names}
        per_fold, test = choose_fold_wise({() if n == "identity" else tuple(n.split("+")): v for n, v in scores.items()},
                                          higher_is_better=False)  # fmt: skip
        by_hand, test_by_hand = _choose_by_hand(scores)
        assert {f: "+".join(s) or "identity" for f, s in per_fold.items()} == by_hand, (trial, scores)
        assert ("+".join(test) or "identity") == test_by_hand, (trial, scores)


def test_tta_candidates_are_chosen_fold_wise_and_used_at_inference(tiny, tmp_path):
    """Each unit's recorded sets are those chosen by hand from its recorded scores (on this data the foraminal
    unit's two folds get different sets, each reading only the other fold's score), and the plain set's
    scores are the validation metric each fold logged for its final weights."""
    result = train(_config(tiny, tmp_path / "tta" / "run", tta="reverse_slices,shifts", conditions="scs,lnfn"))
    units = json.loads((result.run_dir / "result.json").read_text())["units"]
    assert set(units["foraminal"]["tta_scores"]) == {"identity", "shifts"}  # no slice reversal of a foramen
    assert set(units["spinal"]["tta_scores"]) == {"identity", "reverse_slices", "shifts", "reverse_slices+shifts"}
    for name, unit in units.items():
        scores = {s: {int(f): v for f, v in by.items()} for s, by in unit["tta_scores"].items()}
        per_fold, test = _choose_by_hand(scores)
        named = {str(f): list(s) for f, s in unit["tta_folds"].items()}
        assert named == {str(f): [] if s == "identity" else s.split("+") for f, s in per_fold.items()}, name
        assert unit["tta"] == ([] if test == "identity" else test.split("+")), name
        for fold, value in scores["identity"].items():
            logged = pd.read_csv(result.run_dir / name / f"fold{fold}" / "history.csv")["val_metric"].iloc[-1]
            assert value == pytest.approx(logged, rel=1e-6), (name, fold)
    assert "oof_score_plain" in result.summary and "oof_score" in result.summary
    report = tta_report(result.summary)  # 03_train's table: one row per unit and set, one test set per unit
    assert len(report) == 4 + 2 and report.groupby("unit")["test"].sum().tolist() == [1, 1]
    assert sorted(",".join(report.loc[report["unit"] == "spinal", "folds"]).replace(",", "")) == ["0", "1"]
    # inference uses the recorded set: the same run predicts differently with another one
    _, cache_dir = tiny
    path = result.run_dir / "result.json"
    record = json.loads(path.read_text())
    tables = []
    for chosen in ([], ["reverse_slices"]):
        record["units"]["spinal"]["tta"] = chosen
        path.write_text(json.dumps(record))
        tables.append(predict_cache(result.run_dir, cache_dir, device="cpu"))
    assert not np.allclose(tables[0]["severe"], tables[1]["severe"])


def test_an_unknown_tta_or_mix_name_is_an_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown.*registered"):
        train(_config(tiny, tmp_path / "a" / "run", tta="upside_down"))
    with pytest.raises(ValueError, match="unknown.*registered"):
        train(_config(tiny, tmp_path / "b" / "run", mix="mosaic"))


# --- mixup / CutMix -----------------------------------------------------------------------------------------------


def test_mixup_with_alpha_zero_is_plain_training(tiny, tmp_path):
    plain = train(_config(tiny, tmp_path / "plain" / "run", folds="0"))
    folds = str(tmp_path / "plain" / "folds.csv")
    off = train(_config(tiny, tmp_path / "off" / "run", folds="0", mix="mixup,cutmix", mix_alpha=0.0,
                        mix_p=1.0, folds_csv=folds))
    on = train(_config(tiny, tmp_path / "on" / "run", folds="0", mix="mixup", mix_alpha=0.4, mix_p=1.0,
                       folds_csv=folds))
    for name, tensor in _final_weights(plain).items():
        assert torch.equal(tensor, _final_weights(off)[name]), name
    pd.testing.assert_frame_equal(_oof(plain), _oof(off), check_exact=True)
    assert not np.allclose(_oof(plain)["severe"], _oof(on)["severe"])


class _Kill(Exception):
    pass


class _KillAfterFirstEpoch:
    def log_epoch(self, unit, fold, row):
        if row["epoch"] == 1:
            raise _Kill

    def log_result(self, result):
        pass


def test_a_killed_run_with_mixing_resumes_as_if_uninterrupted(tiny, tmp_path):
    """Mixed batches (half of them, mixup or CutMix) draw from (seed, epoch): killed after epoch 1 and resumed,
    the run ends with the weights and out-of-fold predictions of one that was never interrupted."""
    mixing = {"folds": "0", "mix": "mixup,cutmix", "mix_alpha": 0.4, "mix_p": 0.5, "keep_last": True}
    whole = train(_config(tiny, tmp_path / "whole" / "run", **mixing))
    killed = _config(tiny, tmp_path / "killed" / "run", **mixing, folds_csv=str(tmp_path / "whole" / "folds.csv"))
    with pytest.raises(_Kill):
        train(killed, logger=_KillAfterFirstEpoch())
    last = tmp_path / "killed" / "run" / "spinal" / "fold0" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    resumed = train(killed)
    assert load_checkpoint(last)["epoch"] == 2
    for name, tensor in _final_weights(whole).items():
        assert torch.equal(tensor, _final_weights(resumed)[name]), name
    pd.testing.assert_frame_equal(_oof(whole), _oof(resumed), check_exact=True)
    plain = train(_config(tiny, tmp_path / "plain" / "run", folds="0", folds_csv=str(tmp_path / "whole" / "folds.csv")))
    assert not np.allclose(_oof(plain)["severe"], _oof(whole)["severe"])  # the batches were mixed


def test_mixup_and_cutmix_blend_images_and_keep_the_kept_share():
    rng = np.random.default_rng(0)
    a, b = torch.zeros(2, 1, 3, 8, 8), torch.ones(2, 1, 3, 8, 8)
    mixed, lam = mixup(a, b, 0.3, rng)
    assert lam == 0.3 and torch.allclose(mixed, torch.full_like(a, 0.7))
    mixed, lam = cutmix(a, b, 0.75, rng)  # a 4 x 4 box of the partner, through every slice
    assert lam == 0.75 and mixed.sum() == 2 * 3 * 16 and torch.equal(mixed[:, :, 0], mixed[:, :, 2])
    mix = BatchMix(["mixup", "cutmix"], alpha=0.4, p=1.0, seed=3)
    x, meta = torch.rand(6, 1, 3, 8, 8), torch.eye(6)
    mix.set_epoch(2)
    first = mix(x, meta)
    mix.set_epoch(2)
    again = mix(x, meta)
    assert torch.equal(first.x, again.x) and torch.equal(first.perm, again.perm) and 0 < first.lam < 1
    np.testing.assert_allclose(first.meta.sum(1), 1.0, rtol=1e-6)  # the level one-hots blended, not lost
    assert not BatchMix(["mixup"], alpha=0.0, p=1.0, seed=3).active


def test_the_mixed_loss_is_cross_entropy_against_the_soft_target():
    torch.manual_seed(1)
    logits = torch.randn(4, 2, 3)
    target = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1]])
    perm = torch.tensor([2, 0, 3, 1])
    ones = torch.ones(4, 2)
    loss = mixed_loss(build_loss("ce"), logits, target, ones, Mixed(torch.zeros(4), torch.zeros(4), 0.3, perm))
    soft = 0.3 * torch.nn.functional.one_hot(target, 3) + 0.7 * torch.nn.functional.one_hot(target[perm], 3)
    expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the metric's weights: each part weighted by its own true grade
    w = torch.tensor([1.0, 2.0, 4.0])[target]
    weighted = mixed_loss(build_loss("ce"), logits, target, w, Mixed(torch.zeros(4), torch.zeros(4), 0.3, perm))
    ce = build_loss("ce")
    assert torch.allclose(weighted, 0.3 * ce(logits, target, w) + 0.7 * ce(logits, target[perm], w[perm]))
