"""Every registered architecture meets the model contract: (B, C, D, H, W) in, (B, num_outputs) out,
for thin and deep stacks, with finite gradients; weights load only from local files."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lumbar.models import build_model, list_families, list_models, register_model, registry
from lumbar.models.depth import depth_strides
from lumbar.models.medicalnet import medicalnet_key_map

DEPTHS = (1, 3, 5, 15)
TIMM_NAMES = ("timm25d:resnet18", "timmseq:resnet18", "timm25d:convnext_atto")
#: The deepest ResNets run at a quarter width (MONAI's `widen_factor`) to keep this file near 30 s on
#: CPU; their code path is the one resnet3d_10/18 and medicalnet_resnet3d_10/18 exercise at full width.
SMALL = {
    name: {"widen_factor": 0.25}
    for name in (
        "resnet3d_34",
        "resnet3d_50",
        "resnet3d_101",
        "medicalnet_resnet3d_34",
        "medicalnet_resnet3d_50",
    )
}


@pytest.fixture(autouse=True)
def _seed_one_thread():
    """Seeded; one intra-op thread, since on a shared CPU OpenMP barriers on tiny tensors cost 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def min_depth_reached(model: nn.Module, x: torch.Tensor) -> int:
    """Fewest slices any 3D convolution or pooling of `model` outputs for input `x` (feature maps only,
    not the squeeze-excitation convolutions on globally pooled vectors)."""
    depths: list[int] = []

    def record(_module, _inputs, out):
        if out.shape[-1] > 1:
            depths.append(out.shape[2])

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d))
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return min(depths)


def test_registry_lists_every_architecture_of_the_issue():
    expected = {
        "cnn3d",
        "cnn3d_lstm_attn",
        "resnet12_3d",
        "densenet3d_121",
        "seresnext3d_50",
        "efficientnet3d_b0",
        *(f"resnet3d_{n}" for n in (10, 18, 34, 50, 101)),
        *(f"medicalnet_resnet3d_{n}" for n in (10, 18, 34, 50)),
    }
    assert expected <= set(list_models())
    assert list_families() == ["timm25d", "timmseq"]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("name", [*list_models(), *TIMM_NAMES])
def test_forward_backward(name, depth):
    model = build_model(name, in_channels=1, num_outputs=3, depth=depth, **SMALL.get(name, {}))
    x = torch.randn(2, 1, depth, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    params = list(model.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert params[0].grad.abs().sum() > 0  # the gradient reaches the stem
    if model.memory_format == torch.channels_last_3d:  # thin stacks are not pooled away
        assert min_depth_reached(model, x) >= min(depth, 2)


def test_depth_plan_halves_only_while_two_slices_remain():
    assert depth_strides(1, 4) == [1, 1, 1, 1]
    assert depth_strides(3, 4) == [1, 1, 1, 1]
    assert depth_strides(5, 4) == [2, 1, 1, 1]
    assert depth_strides(15, 4) == [2, 2, 2, 1]


@pytest.mark.parametrize("name", [*list_models(), *TIMM_NAMES])
def test_channels_last_gives_the_same_logits(name):
    model = build_model(name, 1, 3, depth=3, **SMALL.get(name, {})).eval()
    x = torch.randn(2, 1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=model.memory_format)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_meta_is_part_of_the_head():
    model = build_model("resnet12_3d", 1, 3, depth=3, num_meta=6, drop_rate=0.2).eval()
    assert model.head.in_features == model.num_features + 6
    x = torch.randn(2, 1, 3, 64, 64)
    meta = torch.zeros(2, 6)
    meta[:, 0] = 1
    other = torch.zeros(2, 6)
    other[:, 4] = 1
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features)
    assert not torch.allclose(model.forward_head(features, meta), model.forward_head(features, other))
    torch.testing.assert_close(model(x, meta), model.forward_head(features, meta))
    model.train()
    model(x, meta).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="num_meta=6"):
        model(x)
    with pytest.raises(ValueError, match="num_meta=0"):
        build_model("cnn3d", 1, 3, depth=3)(x, meta)


def test_bad_input_shape_is_named():
    model = build_model("cnn3d", 1, 3, depth=3)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="depth 3"):
        build_model("timm25d:resnet18", 1, 3, depth=3)(torch.randn(2, 1, 5, 64, 64))


@pytest.mark.parametrize("name", ["no_such_net", "timm25d:", "nofamily:resnet18"])
def test_unknown_name_lists_the_registry(name):
    with pytest.raises(ValueError, match=r"unknown model .*cnn3d.*timm25d:<name>"):
        build_model(name, 1, 3, depth=3)


def test_unknown_timm_name_and_option_are_errors():
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timmseq:not_a_timm_net", 1, 3, depth=3)
    with pytest.raises(ValueError, match="pool must be"):
        build_model("timmseq:resnet18", 1, 3, depth=3, pool="lstm")
    with pytest.raises(TypeError):
        build_model("cnn3d", 1, 3, depth=3, chanels=(8, 16))


def test_duplicate_name_is_an_error_and_new_models_plug_in(monkeypatch):
    models = registry.Registry("model")
    models.update(registry._MODELS)
    monkeypatch.setattr(registry, "_MODELS", models)

    class MeanEncoder(nn.Module):
        num_features = 1

        def forward(self, x):
            return x.mean(dim=(1, 2, 3, 4))[:, None]

    register_model("mean_only")(lambda in_channels, depth, pretrained: MeanEncoder())
    assert "mean_only" in list_models()
    assert build_model("mean_only", 1, 2, depth=1)(torch.randn(4, 1, 1, 8, 8)).shape == (4, 2)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn3d")(lambda **kwargs: MeanEncoder())
    with pytest.raises(ValueError, match="registered twice"):
        register_model("timm25d")(lambda **kwargs: MeanEncoder())


def _as_medicalnet_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """A state dict in MedicalNet's layout: DataParallel prefix, segmentation head, no BN counters."""
    state = {f"module.{k}": v.clone() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    width = state["module.conv1.weight"].shape[0] * 8  # layer4 output of a basic-block net
    state["module.conv_seg.0.weight"] = torch.randn(width, 32, 2, 2, 2)  # ConvTranspose3d of the seg head
    state["module.conv_seg.0.bias"] = torch.randn(32)
    state["module.conv_seg.6.weight"] = torch.randn(2, 32, 1, 1, 1)
    return {"epoch": 200, "state_dict": state}


@pytest.mark.parametrize("name", ["medicalnet_resnet3d_10", "medicalnet_resnet3d_18"])  # shortcut B and A
def test_medicalnet_checkpoint_loads(name, tmp_path):
    reference = build_model(name, 1, 3, depth=5, widen_factor=0.25).encoder
    for p in reference.parameters():
        nn.init.normal_(p)
    for b in reference.buffers():
        if b.is_floating_point():
            nn.init.uniform_(b, 0.5, 1.5)  # BN running statistics travel too
    path = tmp_path / "resnet.pth"
    torch.save(_as_medicalnet_checkpoint(reference.state_dict()), path)

    model = build_model(name, 1, 3, depth=5, pretrained=path, widen_factor=0.25)
    loaded = model.encoder.state_dict()
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)

    two = build_model(name, 2, 3, depth=5, pretrained=path, widen_factor=0.25).encoder
    torch.testing.assert_close(two.conv1.weight.sum(dim=1), reference.conv1.weight[:, 0])


def test_medicalnet_key_map_and_mismatch_errors(tmp_path):
    mapped = medicalnet_key_map(
        {"module.conv1.weight": torch.ones(4, 1, 7, 7, 7), "module.conv_seg.0.weight": torch.ones(1)},
        in_channels=3,
    )
    assert list(mapped) == ["conv1.weight"] and mapped["conv1.weight"].shape == (4, 3, 7, 7, 7)
    torch.testing.assert_close(mapped["conv1.weight"].sum(dim=1), torch.ones(4, 7, 7, 7))

    path = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.ones(16, 1, 7, 7, 7)}}, path)
    with pytest.raises(ValueError, match=r"wrong\.pth.*missing"):
        build_model("medicalnet_resnet3d_10", 1, 3, depth=5, pretrained=path, widen_factor=0.25)
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        build_model("medicalnet_resnet3d_10", 1, 3, depth=5, pretrained=tmp_path / "absent.pth")


def test_timm_weights_come_from_a_local_file(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)  # the layout of timm's own checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    rgb = build_model("timm25d:resnet18", 1, 3, depth=3, pretrained=path)  # 3 slices = 3 channels
    torch.testing.assert_close(rgb.encoder.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(rgb.encoder.backbone.conv1.weight, source.conv1.weight)

    gray = build_model("timmseq:resnet18", 1, 3, depth=5, pretrained=path, pool="attn")
    torch.testing.assert_close(
        gray.encoder.backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True)
    )
    assert gray.mean == tuple(source.pretrained_cfg["mean"]) and gray.std == tuple(
        source.pretrained_cfg["std"]
    )
    assert gray.memory_format == torch.channels_last

    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        build_model("timm25d:resnet18", 1, 3, depth=3, pretrained=tmp_path / "absent.pth")


def test_own_weights_round_trip(tmp_path):
    model = build_model("cnn3d", 1, 3, depth=5, channels=(8, 16))
    path = tmp_path / "encoder.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.encoder.state_dict().items()}}, path)
    again = build_model("cnn3d", 1, 3, depth=5, channels=(8, 16), pretrained=path)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(again.encoder.state_dict()[key], value)
    assert again.config == {
        "name": "cnn3d",
        "in_channels": 1,
        "num_outputs": 3,
        "depth": 5,
        "num_meta": 0,
        "drop_rate": 0.0,
        "channels": (8, 16),
    }
