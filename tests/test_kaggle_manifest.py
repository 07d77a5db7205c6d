"""The Kaggle weights dataset carries only the classifiers the ensemble uses."""

import json

from lumbar.kaggle import _referenced_files, inference_manifest


def test_unused_classifiers_stay_out_of_the_bundle(tmp_path):
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "params.json").write_text(json.dumps({"models": ["cnn3d"], "weights": {"all": [1.0]}}))
    manifest = {
        "classifiers": {name: {"path": name, "checkpoints": {"spinal": {"0": f"{name}/spinal/fold0/best.pt"}}}
                        for name in ("cnn3d", "timm25d_resnet18")},
        "ensemble": {"models": ["cnn3d", "timm25d_resnet18"], "params": "ensemble/params.json"},
    }  # fmt: skip
    kept = inference_manifest(tmp_path, manifest)
    assert list(kept["classifiers"]) == ["cnn3d"] and kept["ensemble"]["models"] == ["cnn3d"]
    files = _referenced_files(kept)
    assert "cnn3d/spinal/fold0/best.pt" in files and not any(f.startswith("timm25d") for f in files)
    assert list(manifest["classifiers"]) == ["cnn3d", "timm25d_resnet18"]  # the run's own manifest is untouched
    assert inference_manifest(tmp_path, {"classifiers": manifest["classifiers"]}) == {"classifiers": manifest["classifiers"]}
