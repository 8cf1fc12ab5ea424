"""Every bad input gives one line naming the problem; a malicious pickle never executes."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch

from gankd.distill import GankdError, ModelConfig, create_model, load_model, save_model
from gankd.distill.models.importers import import_pth
from gankd.distill.models.weight_files import read_weights

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
    for name in ("model.safetensors", "model.safetensors.sha256"):  # another folder's weights, checksum and all
        os.replace(tmp_path / "other" / name, model_dir / name)
    msg = _one_line_error(lambda: load_model(model_dir), r"'body.0.weight' has shape \[16, 3, 3, 3\] in the file "
                                                         r"but \[8, 3, 3, 3\] in the model")
    assert "model.safetensors" in msg


def test_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import save_file

    sd = CFG.build().state_dict()
    save_model(tmp_path / "m", CFG.build(), CFG)
    save_file({k: v for k, v in sd.items() if k != "body.2.bias"}, str(tmp_path / "m" / "model.safetensors"))
    _one_line_error(lambda: load_model(tmp_path / "m", verify=False), r"key 'body.2.bias' \[8\] is missing")
    save_file({**sd, "extra.weight": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"))
    _one_line_error(lambda: load_model(tmp_path / "m", verify=False), "unexpected key 'extra.weight'")


def test_nan_weights_refused(model_dir):
    from safetensors.torch import save_file

    sd = CFG.build().state_dict()
    sd["body.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(model_dir / "model.safetensors"))
    _one_line_error(lambda: load_model(model_dir, verify=False), "'body.0.weight' contains NaN or Inf")


def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _one_line_error(lambda: load_model(model_dir, verify=False), "model.safetensors' is truncated or corrupted")
    _one_line_error(lambda: load_model(model_dir), "does not match its recorded sha256")


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
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors",
                                                           "model.safetensors.sha256"]
    load_model(model_dir)  # the recorded checksum is still the kept weights'


def _sparse_safetensors(path, shape, dtype="F32", itemsize=4, declared_bytes=None, real_bytes=None):
    """A .safetensors file whose header declares one tensor of ``shape``; its data really is that large (sparse),
    unless ``real_bytes`` says otherwise."""
    import json
    import struct

    n = declared_bytes if declared_bytes is not None else itemsize
    for side in shape:
        n = n * side if declared_bytes is None else n
    header = json.dumps({"w": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + (n if real_bytes is None else real_bytes))
    return path


def test_safetensors_bomb_is_refused_from_its_header(tmp_path):
    """Case 5: a 100000x100000 F32 tensor, the file really that large (sparse): refused before any allocation."""
    import safetensors.torch

    def never(*args, **kwargs):
        raise AssertionError("safetensors was asked to load the bomb")

    path = _sparse_safetensors(tmp_path / "bomb.safetensors", (100_000, 100_000))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safetensors.torch, "load_file", never)
        message = _one_line_error(lambda: read_weights(path), r"declares 37\.3 GiB of tensors, more than")
    assert "half of this machine's memory" in message


@pytest.mark.parametrize("shape, declared, real, match", [
    ((4, 4), 64, 32, "lie outside the file"),  # the header points past the end of the file
    ((4, 4), 60, 60, r"needs 64 bytes, the header gives it 60"),  # dtype x shape disagrees with the range
])
def test_safetensors_header_that_lies(tmp_path, shape, declared, real, match):
    path = _sparse_safetensors(tmp_path / "lie.safetensors", shape, declared_bytes=declared, real_bytes=real)
    _one_line_error(lambda: read_weights(path), match)


def test_safetensors_huge_header_length(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    _one_line_error(lambda: read_weights(path), "header of 1099511627776 bytes")


def test_pth_zip_declaring_more_than_memory_is_refused(tmp_path, monkeypatch):
    from gankd.distill.models import weight_files as weights

    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    read_weights(path)  # fine within the budget
    monkeypatch.setattr(weights, "memory_budget_bytes", lambda: 1000)  # negative control: a budget it exceeds
    _one_line_error(lambda: read_weights(path), "declares .* GiB of tensors, more than")


def test_flipped_bit_in_model_folder_is_refused(model_dir):
    """Case 7: one bit flipped in the tensor data; loads with --no-verify (verify=False) only."""
    from gankd.distill.models.folder import unverified

    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    _one_line_error(lambda: load_model(model_dir), "does not match its recorded sha256.*--no-verify")
    load_model(model_dir, verify=False)
    with unverified():
        load_model(model_dir)
    save_model(model_dir, CFG.build(), CFG)  # writing the folder again records the new weights
    load_model(model_dir)


def test_folder_without_checksum_loads_with_a_notice(model_dir, caplog):
    (model_dir / "model.safetensors.sha256").unlink()
    with caplog.at_level("WARNING"):
        load_model(model_dir)
    notices = [r.getMessage() for r in caplog.records if "model.safetensors.sha256" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "not verified" in notices[0]


def test_export_refuses_a_tampered_model_folder(model_dir, tmp_path):
    from gankd.export.cli import export_main

    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[-5] ^= 1
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    out = tmp_path / "art"
    assert export_main([str(model_dir), "--out", str(out), "--formats", "onnx"]) == 2
    assert not out.exists()
    assert export_main([str(model_dir), "--out", str(out), "--formats", "onnx", "--no-verify"]) == 0


def test_import_force_refuses_a_folder_of_other_files(tmp_path):
    """Case 6: --force replaces a gankd model folder, never someone's files."""
    from gankd.distill.cli import main

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("precious")
    src = tmp_path / "w.pth"
    torch.save({"params_ema": CFG.build().state_dict()}, src)
    assert main(["import-teacher", "--from", "pth", str(src), "--out", str(theirs), "--force"]) == 2
    assert (theirs / "thesis.tex").read_text() == "precious"
    ours = tmp_path / "ours"
    assert main(["import-teacher", "--from", "pth", str(src), "--out", str(ours)]) == 0
    assert main(["import-teacher", "--from", "pth", str(src), "--out", str(ours)]) == 2  # without --force
    assert main(["import-teacher", "--from", "pth", str(src), "--out", str(ours), "--force"]) == 0
    load_model(ours)


def test_export_force_refuses_a_folder_of_other_files(model_dir, tmp_path):
    from gankd.export.cli import export_main

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    assert export_main([str(model_dir), "--out", str(theirs), "--formats", "onnx", "--force"]) == 2
    assert (theirs / "notes.txt").read_text() == "precious"
    art = tmp_path / "art"
    assert export_main([str(model_dir), "--out", str(art), "--formats", "onnx"]) == 0
    assert export_main([str(model_dir), "--out", str(art), "--formats", "onnx", "--force"]) == 0  # gankd's own


def test_a_folder_named_like_a_weight_file_is_called_a_folder(tmp_path):
    (tmp_path / "x.pth").mkdir()
    _one_line_error(lambda: read_weights(tmp_path / "x.pth"), "is a folder, not a weight file")
    _one_line_error(lambda: read_weights(tmp_path / "y.pth"), "does not exist")  # negative control
