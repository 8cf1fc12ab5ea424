"""Every bad input gives one line naming the problem; a malicious pickle never executes."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch

from gankd.distill import GankdError, ModelConfig, create_model, load_model, save_model
from gankd.distill.importers import import_pth
from gankd.distill.weights import read_weights

CFG = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1}, scale=4)


@pytest.fixture
def model_dir(tmp_path):
    return save_model(tmp_path / "m", CFG.build(), CFG)


def _one_line_error(fn, match):
    with pytest.raises(GankdError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_folder(tmp_path):
    _one_line_error(lambda: load_model(tmp_path / "nope"), "model folder .*nope' does not exist")


def test_not_a_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: load_model(tmp_path / "empty"), "is not a gankd model folder: config.json is missing")
    (tmp_path / "file").write_text("x")
    _one_line_error(lambda: load_model(tmp_path / "file"), "is a file, not a model folder")


def test_missing_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    _one_line_error(lambda: load_model(model_dir), "model.safetensors' is missing")


def test_config_not_json(model_dir):
    (model_dir / "config.json").write_text("{arch: rrdbnet")
    _one_line_error(lambda: load_model(model_dir), "config.json is not valid JSON")


def test_unknown_arch(model_dir):
    data = json.loads((model_dir / "config.json").read_text())
    data["arch"] = "esrgan_plus"
    (model_dir / "config.json").write_text(json.dumps(data))
    _one_line_error(lambda: load_model(model_dir), r"config.json: unknown arch 'esrgan_plus'; registered: gcfsr, rrdbnet")


def test_unknown_config_key_and_bad_value(model_dir):
    data = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**data, "widht": 0.5}))
    _one_line_error(lambda: load_model(model_dir), "unknown key 'widht'")
    (model_dir / "config.json").write_text(json.dumps({**data, "task": "denoise"}))
    _one_line_error(lambda: load_model(model_dir), "task must be one of sr, face_sr, generate")


def test_checkpoint_of_wrong_architecture(model_dir, tmp_path):
    other = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 16, "num_conv": 1}, scale=4)
    save_model(tmp_path / "other", other.build(), other)
    os.replace(tmp_path / "other" / "model.safetensors", model_dir / "model.safetensors")
    msg = _one_line_error(lambda: load_model(model_dir), r"'body.0.weight' has shape \[16, 3, 3, 3\] in the file "
                                                         r"but \[8, 3, 3, 3\] in the model")
    assert "model.safetensors" in msg


def test_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import save_file

    sd = CFG.build().state_dict()
    save_model(tmp_path / "m", CFG.build(), CFG)
    save_file({k: v for k, v in sd.items() if k != "body.2.bias"}, str(tmp_path / "m" / "model.safetensors"))
    _one_line_error(lambda: load_model(tmp_path / "m"), r"key 'body.2.bias' \[8\] is missing")
    save_file({**sd, "extra.weight": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"))
    _one_line_error(lambda: load_model(tmp_path / "m"), "unexpected key 'extra.weight'")


def test_nan_weights_refused(model_dir):
    from safetensors.torch import save_file

    sd = CFG.build().state_dict()
    sd["body.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(model_dir / "model.safetensors"))
    _one_line_error(lambda: load_model(model_dir), "'body.0.weight' contains NaN or Inf")


def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _one_line_error(lambda: load_model(model_dir), "model.safetensors' is truncated or corrupted")


def test_truncated_and_garbage_pth(tmp_path):
    torch.save({"params": CFG.build().state_dict()}, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "a.pth").write_bytes(data[: len(data) // 2])
    _one_line_error(lambda: import_pth(tmp_path / "a.pth"), "a.pth' is truncated or corrupted")
    (tmp_path / "b.pth").write_bytes(b"this is not a checkpoint at all")
    _one_line_error(lambda: import_pth(tmp_path / "b.pth"), "b.pth' is truncated or corrupted")
    (tmp_path / "c.pth").write_bytes(b"")
    _one_line_error(lambda: import_pth(tmp_path / "c.pth"), "c.pth' is empty")
    _one_line_error(lambda: import_pth(tmp_path / "d.pth"), "d.pth' does not exist")


def test_checkpoint_that_is_not_a_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    _one_line_error(lambda: import_pth(tmp_path / "list.pth"), "holds a list, not a state dict")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_zip_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"params": {"w": torch.zeros(1)}, "evil": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert zipfile.is_zipfile(tmp_path / "evil.pth")
    msg = _one_line_error(lambda: import_pth(tmp_path / "evil.pth"), "refusing to load .*evil.pth'.*weights")
    assert not marker.exists(), msg


def test_malicious_legacy_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "legacy.pth", "wb") as handle:
        pickle.dump({"params": _Payload(str(marker))}, handle, protocol=2)
    with pytest.raises(GankdError) as info:
        read_weights(tmp_path / "legacy.pth")
    assert not marker.exists(), str(info.value)
    assert "\n" not in str(info.value)


def test_save_refuses_mismatched_config_and_file_target(tmp_path):
    wrong = create_model("srvgg_compact", num_feat=16, num_conv=1)
    _one_line_error(lambda: save_model(tmp_path / "x", wrong, CFG), "do not match its config")
    assert not (tmp_path / "x").exists()
    (tmp_path / "f").write_text("x")
    _one_line_error(lambda: save_model(tmp_path / "f", CFG.build(), CFG), "it is a file")


def test_interrupted_save_keeps_previous_weights(model_dir, monkeypatch):
    before = (model_dir / "model.safetensors").read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model_dir, CFG.build(), CFG)
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
