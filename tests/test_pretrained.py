"""Pretrained encoders: none, imagenet through timm's hub loader, a weights folder, and `lumbar weights`.

No test touches the network: the Hugging Face hub is offline and its cache is a folder the test fills with
randomly initialised timm models in the hub's own layout (`models--timm--<name>/snapshots/<rev>/`), so
`imagenet` runs timm's real hub loading and `weights` its real download call, both served from that cache.
"""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv, get_pretrained_cfg

from lumbar.cli import main
from lumbar.core.encoders import INDEX_JSON, create_timm_model, gray_stats
from lumbar.core.paths import PROJECT_ROOT
from lumbar.localize.heatmap import HeatmapNet
from lumbar.localize.slice_refine import SliceScorer
from lumbar.models import build_model
from lumbar.weights import config_encoders, write_weights_folder

CLASSIFIER, SCORER = "test_resnet", "test_efficientnet"  # timm's tiny test models, each with hub weights
REVISION = "0" * 40


def fill_hub_cache(cache, name: str, seed: int) -> dict[str, torch.Tensor]:
    """Put a random timm model where the hub cache keeps `name`'s weights; return its state dict."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    repo = cache / f"models--{get_pretrained_cfg(name).hf_hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / REVISION / "model.safetensors"))
    return state


def offline_hub(monkeypatch, cache) -> None:
    """Hub offline, its cache at `cache` (huggingface_hub reads both at call time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An offline hub whose cache holds the two test models: (cache folder, {name: saved state dict})."""
    cache = tmp_path_factory.mktemp("hub")
    saved = {name: fill_hub_cache(cache, name, seed) for seed, name in enumerate((CLASSIFIER, SCORER))}
    with pytest.MonkeyPatch.context() as mp:
        offline_hub(mp, cache)
        yield cache, saved


@pytest.fixture(scope="module")
def folder(hub, tmp_path_factory):
    """A weights folder written by `write_weights_folder` from the filled hub cache."""
    out = tmp_path_factory.mktemp("weights")
    write_weights_folder([f"{CLASSIFIER}.r160_in1k", f"{SCORER}.r160_in1k"], out, user="me", log=lambda _: None)
    return out


def assert_loaded(module: torch.nn.Module, saved: dict[str, torch.Tensor], first_conv: str, in_chans: int) -> None:
    """Every tensor of `module` is the saved one; the first convolution adapted to `in_chans` as timm does."""
    own = module.state_dict()
    assert set(own) - set(saved) == set()  # features-only and classifier-free models hold a subset
    for key, value in own.items():
        expected = adapt_input_conv(in_chans, saved[key]) if key == f"{first_conv}.weight" else saved[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


def assert_starts_from(checkpoint: dict[str, torch.Tensor], prefix: str, saved: dict[str, torch.Tensor],
                       first_conv: str) -> None:  # fmt: skip
    """Every convolution after the first holds the saved weights (trained with lr 0: unchanged)."""
    convs = [k for k, v in saved.items() if v.ndim == 4 and k != f"{first_conv}.weight"]
    assert convs and all(torch.equal(checkpoint[prefix + k], saved[k]) for k in convs)


def test_imagenet_loads_through_timms_hub_loader(hub):
    _, saved = hub
    model = build_model(f"timmseq:{CLASSIFIER}", 1, 3, depth=4, pretrained="imagenet", pool="attn")
    assert_loaded(model.encoder.backbone, saved[CLASSIFIER], "conv1.0", in_chans=1)
    stem = model.encoder.backbone.conv1[0].weight
    torch.testing.assert_close(stem, saved[CLASSIFIER]["conv1.0.weight"].sum(dim=1, keepdim=True))
    net = create_timm_model(SCORER, "imagenet", in_chans=1, num_classes=0)
    assert_loaded(net, saved[SCORER], "conv_stem", in_chans=1)


def test_imagenet_without_network_or_cache_stops_with_one_line(tmp_path, monkeypatch, capsys):
    offline_hub(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(OSError) as raised:
        build_model(f"timm25d:{CLASSIFIER}", 1, 3, depth=3, pretrained="imagenet")
    message = str(raised.value)
    assert "\n" not in message and f"'{CLASSIFIER}.r160_in1k' are not in the Hugging Face cache" in message
    assert "python -m lumbar weights --config CONFIG --out DIR" in message and "set pretrained to none" in message
    assert type(raised.value.__cause__).__name__ == "LocalEntryNotFoundError"  # timm really asked the hub

    config = tmp_path / "one.yaml"
    step = {"notebook": "03_train", "parameters": {"ARCH": f"timm25d:{CLASSIFIER}"}}
    config.write_text(yaml.safe_dump({"notebooks": [step]}))
    assert main(["weights", "--config", str(config), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lumbar weights: error: ImageNet weights of timm model")
    assert err[0].endswith("or set pretrained to none")


def test_weights_command_writes_a_kaggle_dataset_folder(hub, tmp_path, monkeypatch, capsys):
    """The real download call (served by the filled cache): folder layout, index, sizes, metadata, tensors."""
    cache, saved = hub
    config = tmp_path / "tiny.yaml"
    localizer = {"BACKBONE": CLASSIFIER, "EXTRA": {"refine_backbone": SCORER}}
    steps = [{"notebook": "02_train_localizer", "parameters": localizer},
             {"notebook": "03_train", "output": "03_a", "parameters": {"ARCH": f"timm25d:{CLASSIFIER}"}},
             {"notebook": "03_train", "output": "03_b", "parameters": {"ARCH": "cnn3d"}}]  # fmt: skip
    config.write_text(yaml.safe_dump({"notebooks": steps}))
    out = tmp_path / "weights"
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert main(["weights", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "names 4 encoders, 2 distinct timm weights" in printed and "no timm weights" in printed

    names = {name: f"{name}.r160_in1k" for name in (CLASSIFIER, SCORER)}
    assert sorted(p.name for p in out.iterdir()) == sorted(["dataset-metadata.json", INDEX_JSON] +
                                                          [f"{n}.safetensors" for n in names.values()])  # fmt: skip
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/lumbar-encoders" and meta["title"] and meta["licenses"]
    index = json.loads((out / INDEX_JSON).read_text())
    assert index["timm"] == timm.__version__ and set(index["encoders"]) == set(names.values())
    for name, key in names.items():
        entry = index["encoders"][key]
        file = out / entry["file"]
        assert entry["bytes"] == file.stat().st_size > 0
        assert entry["params"] == sum(p.numel() for p in timm.create_model(name).parameters())
        assert entry["source"] == f"hf-hub:timm/{key}"
        stored = load_file(str(file))
        assert stored.keys() == saved[name].keys()
        assert all(torch.equal(stored[k], saved[name][k]) for k in stored)

    for repo in cache.iterdir():  # fetched once: a second run needs neither the hub nor its cache
        repo.rename(tmp_path / repo.name)
    try:
        assert main(["weights", "--config", str(config), "--out", str(out)]) == 0
    finally:
        for repo in tmp_path.glob("models--*"):
            repo.rename(cache / repo.name)
    assert capsys.readouterr().out.count("already in") == 2


def test_dry_run_lists_every_encoder_of_full_yaml(tmp_path, monkeypatch, capsys):
    def no_download(*args, **kwargs):
        raise AssertionError("a dry run fetched weights")

    monkeypatch.setattr(timm, "create_model", no_download)
    out = tmp_path / "weights"
    full = PROJECT_ROOT / "configs" / "full.yaml"
    assert main(["weights", "--config", str(full), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [("02_train_localizer", "localizer", "resnet34.a1_in1k"),
                ("02_train_localizer", "slice scorer", "resnet34.a1_in1k"),
                ("03_train_timmseq_convnext_small", "classifier", "convnext_small.fb_in22k"),
                ("03_train_timmseq_efficientnetv2_s", "classifier", "tf_efficientnetv2_s.in21k_ft_in1k"),
                ("03_train_timm25d_resnet34", "classifier", "resnet34.a1_in1k"),
                ("03_train_timmseq_hgnetv2_b5", "classifier", "hgnetv2_b5.ssld_stage2_ft_in1k")]  # fmt: skip
    rows = [line.split(None, 1) for line in lines[1:-1]]
    assert [r[0] for r in rows] == [step for step, _, _ in expected]
    for (step, role, weights), line in zip(expected, lines[1:-1]):
        assert line.split()[0] == step and f" {role} " in line and f" {weights} " in line
        assert line.endswith(f"hf-hub:timm/{weights} -> {weights}.safetensors")
    assert "names 6 encoders, 4 distinct timm weights" in lines[0] and "dry run" in lines[-1]
    assert not out.exists()


def test_folder_loads_into_classifier_localizer_and_slice_scorer(hub, folder):
    _, saved = hub
    classifier = build_model(f"timm25d:{CLASSIFIER}", 1, 3, depth=5, pretrained=str(folder))
    assert_loaded(classifier.encoder.backbone, saved[CLASSIFIER], "conv1.0", in_chans=5)
    localizer = HeatmapNet(CLASSIFIER, in_chans=6, num_points=5, depth_bins=6, pretrained=str(folder))
    assert_loaded(localizer.encoder, saved[CLASSIFIER], "conv1.0", in_chans=6)
    scorer = SliceScorer(SCORER, pretrained=str(folder))
    assert_loaded(scorer.encoder, saved[SCORER], "conv_stem", in_chans=1)
    single = create_timm_model(SCORER, folder / f"{SCORER}.r160_in1k.safetensors", in_chans=1, num_classes=0)
    assert_loaded(single, saved[SCORER], "conv_stem", in_chans=1)  # a file works as well as the folder

    with pytest.raises(ValueError, match=rf"{INDEX_JSON}: no weights for 'resnet18.a1_in1k' \(it holds test_"):
        build_model("timm25d:resnet18", 1, 3, depth=3, pretrained=str(folder))
    with pytest.raises(ValueError, match="cnn3d: no weights for|no weights for 'cnn3d'"):
        build_model("cnn3d", 1, 3, depth=3, pretrained=str(folder))


def test_settings_that_cannot_work_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="resnet3d_18: no ImageNet weights .*MONAI.*use pretrained: none"):
        build_model("resnet3d_18", 1, 3, depth=5, pretrained="imagenet", widen_factor=0.25)
    with pytest.raises(ValueError, match="medicalnet_resnet3d_18: no ImageNet weights .*MedicalNet's own"):
        build_model("medicalnet_resnet3d_18", 1, 3, depth=5, pretrained="imagenet", widen_factor=0.25)
    with pytest.raises(ValueError, match="cnn3d: no ImageNet weights"):
        build_model("cnn3d", 1, 3, depth=5, pretrained="imagenet")
    with pytest.raises(ValueError, match="timm has no pretrained weights for 'test_coatnet'"):
        create_timm_model("test_coatnet", "imagenet")
    with pytest.raises(ValueError, match="pretrained is empty"):
        build_model(f"timm25d:{CLASSIFIER}", 1, 3, depth=3, pretrained="")
    with pytest.raises(FileNotFoundError, match=rf"not none, imagenet, a weights file or a weights folder \({tmp_path}/absent"):
        build_model(f"timm25d:{CLASSIFIER}", 1, 3, depth=3, pretrained=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no encoders.json; a weights folder is written by `python -m lumbar"):
        build_model(f"timm25d:{CLASSIFIER}", 1, 3, depth=3, pretrained=str(tmp_path / "empty"))


def test_the_old_setting_name_points_to_the_new_one():
    from lumbar.localize.config import LocalizerConfig
    from lumbar.train.config import make_config

    with pytest.raises(ValueError, match="unknown setting 'pretrained_path'; did you mean 'pretrained'"):
        make_config({"pretrained_path": "x.pth"})
    with pytest.raises(ValueError, match="unknown setting 'pretrained_path'; did you mean 'pretrained'"):
        LocalizerConfig().with_overrides({"pretrained_path": "x.pth"})
    assert make_config({}).pretrained == LocalizerConfig().pretrained == "none"


def test_localizer_normalises_its_input_with_the_encoders_statistics():
    """The same normalisation in training and inference: it is inside the modules' forward."""
    torch.manual_seed(0)
    net = HeatmapNet(SCORER, in_chans=3, num_points=2, decoder_channels=8).eval()
    cfg = net.encoder.pretrained_cfg
    assert (net.mean, net.std) == gray_stats(cfg["mean"], cfg["std"]) != (0.0, 1.0)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(net.encoder((x - net.mean) / net.std)[-1], _last_feature(net, x))
    scorer = SliceScorer(CLASSIFIER).eval()
    cfg = scorer.encoder.pretrained_cfg
    assert (scorer.mean, scorer.std) == gray_stats(cfg["mean"], cfg["std"])


def _last_feature(net: HeatmapNet, x: torch.Tensor) -> torch.Tensor:
    """The encoder's deepest feature map during `net(x)`."""
    seen = []
    handle = net.encoder.register_forward_hook(lambda module, args, out: seen.append(out[-1]))
    try:
        net(x)
    finally:
        handle.remove()
    return seen[0]


def test_training_starts_from_the_folder_and_inference_never_needs_it(hub, folder, synthetic_dir, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """The 02 and 03 notebooks' code paths with `pretrained: <folder>`; then predict without folder or hub."""
    from _train_data import make_tiny_data

    from lumbar.core.checkpoint import load_checkpoint
    from lumbar.localize.config import LocalizerConfig
    from lumbar.localize.predict import localize
    from lumbar.localize.train import train_localizer
    from lumbar.train import predict_cache, train

    _, saved = hub
    copy = tmp_path / "encoders"  # removed before inference
    shutil.copytree(folder, copy)
    # lr 0: the trained weights are the initial ones, so the checkpoints show where training started
    config = LocalizerConfig().with_overrides({"backbone": CLASSIFIER, "refine_backbone": SCORER,
                                               "pretrained": str(copy), "size": 32, "slices": 4, "epochs": 1,
                                               "refine_epochs": 1, "lr": 0.0, "tasks": "sag_t1",
                                               "refine_tasks": "sag_t1", "batch_size": 4, "decoder_channels": 8,
                                               "device": "cpu", "threads": 1})  # fmt: skip
    run = tmp_path / "run"
    coords = synthetic_dir / "train_label_coordinates.csv"
    manifest = train_localizer(config, synthetic_dir, coords, run, progress=False)
    assert manifest["config"]["pretrained"] == str(copy)
    heatmap = torch.load(run / manifest["models"]["sag_t1"]["checkpoint"], weights_only=True)
    scorer = torch.load(run / manifest["models"]["sag_t1_slices"]["checkpoint"], weights_only=True)
    assert_starts_from(heatmap, "encoder.", saved[CLASSIFIER], "conv1.0")
    assert_starts_from(scorer, "encoder.", saved[SCORER], "conv_stem")

    data_dir, cache_dir = make_tiny_data(tmp_path / "tiny", n_studies=4, conditions=("spinal_canal_stenosis",))
    result = train({"data_dir": str(data_dir), "cache": str(cache_dir), "out": str(tmp_path / "exp" / "run"),
                    "arch": f"timm25d:{CLASSIFIER}", "conditions": "scs", "n_folds": 2, "folds": "0", "epochs": 1,
                    "batch_size": 4, "fast_dev_run": 1, "lr": 0.0, "pretrained": str(copy), "progress": False,
                    "threads": 1})  # fmt: skip
    final = load_checkpoint(next(result.run_dir.glob("*/fold0/final.pt")))  # select="last"
    assert_starts_from(final, "encoder.backbone.", saved[CLASSIFIER], "conv1.0")

    shutil.rmtree(copy)  # inference: no weights folder, and any pretrained loading fails

    def refuse(*args, **kwargs):
        raise AssertionError("inference loaded pretrained weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    coords, report = localize(synthetic_dir, "test", run, progress=False, device="cpu")
    assert len(coords) > 0 and report.rows_per_study
    sub = predict_cache(result.run_dir, cache_dir, device="cpu", threads=1)
    assert len(sub) == 25 * 4


def test_docs_table_names_every_encoder_of_full_yaml():
    table = (PROJECT_ROOT / "docs" / "training.md").read_text()
    encoders = config_encoders(PROJECT_ROOT / "configs" / "full.yaml")
    assert all(e.weights for e in encoders)  # every encoder of the real recipe has ImageNet weights
    assert all(f"| `{e.weights}` |" in table for e in encoders)


def test_runs_saved_before_the_setting_was_renamed_still_load(tmp_path):
    from lumbar.localize.config import LocalizerConfig
    from lumbar.train.config import TrainConfig, make_config

    saved = make_config({}).to_dict()
    saved["pretrained_path"] = saved.pop("pretrained") and ""
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert TrainConfig.load(tmp_path / "config.json").pretrained == "none"
    old = LocalizerConfig.from_dict({"pretrained_path": "/w/resnet18.pth", "backbone": "test_resnet"})
    assert old.pretrained == "/w/resnet18.pth" and not old.normalize_inputs  # trained without normalisation
    assert LocalizerConfig.from_dict({"backbone": "test_resnet"}).normalize_inputs
    from lumbar.localize.tasks import TASKS
    from lumbar.localize.train import build_model

    raw = build_model(TASKS["sag_t2"], old)
    assert (raw.mean, raw.std) == (0.0, 1.0) and build_model(TASKS["sag_t2"], LocalizerConfig()).std != 1.0
    with pytest.raises(ValueError, match="did you mean 'pretrained'"):
        make_config({"pretrained_path": "/w/resnet18.pth"})  # a user's override is not upgraded
