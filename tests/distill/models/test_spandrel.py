"""Bring your own teacher: any SR file spandrel's main registry detects imports, distils and exports.

Tiny randomly initialised spandrel models of three families stand in for real checkpoints: SwinIR (a transformer
with a window and a minimum size), PLKSR (a CNN) and Compact (SRVGGNetCompact, which becomes gankd's own arch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gankd.distill import GankdError, load_model
from gankd.distill.cli import main as distill_main
from gankd.distill.data.teacher_cache import _cache_key
from gankd.distill.models.importers import import_spandrel

spandrel = pytest.importorskip("spandrel", reason="spandrel is part of gankd[all]")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # SwinIR's torch.meshgrid notice


def _swinir():
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2, upscale=4,
                  upsampler="pixelshuffledirect")


def _plksr():
    from spandrel.architectures.PLKSR import PLKSR

    return PLKSR(dim=8, n_blocks=2, upscaling_factor=4)


def _compact():
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)


# name -> (builder, how the file is saved, the gankd arch it becomes)
FAMILIES = {
    "swinir": (_swinir, "params_ema.pth", "spandrel"),
    "plksr": (_plksr, "safetensors", "spandrel"),
    "compact": (_compact, "bare.pth", "srvgg_compact"),
}


def _save(net, kind: str, folder: Path, name: str) -> Path:
    state = net.state_dict()
    if kind == "safetensors":
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = folder / f"{name}.pth"
        torch.save({"params_ema": state} if kind == "params_ema.pth" else state, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    folder = tmp_path_factory.mktemp("spandrel_files")
    out = {}
    for name, (build, kind, _) in FAMILIES.items():
        torch.manual_seed(0)
        net = build().eval()
        out[name] = (_save(net, kind, folder, name), net)
    return out


@pytest.fixture(scope="module")
def teachers(files, tmp_path_factory) -> dict[str, Path]:
    """Each file imported through the CLI, as a user would."""
    folder = tmp_path_factory.mktemp("spandrel_teachers")
    out = {}
    for name, (path, _) in files.items():
        assert distill_main(["import-teacher", "--from", "spandrel", str(path), "--out", str(folder / name)]) == 0
        out[name] = folder / name
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_rebuilds_the_detected_network(name, files, teachers):
    _, net = files[name]
    teacher = load_model(teachers[name])
    config = json.loads((teachers[name] / "config.json").read_text())
    assert config["arch"] == FAMILIES[name][2]
    assert config["provenance"]["format"] == "spandrel"
    assert config["provenance"]["spandrel_version"] == spandrel.__version__
    x = torch.rand(2, 3, 16, 20)
    with torch.no_grad():
        assert torch.equal(teacher(x), net(x))  # rebuilt from the folder alone, bit for bit


def test_foreign_teacher_records_size_requirements_and_pads(teachers, files):
    config = json.loads((teachers["swinir"] / "config.json").read_text())
    kw = config["kwargs"]
    assert (kw["architecture"], kw["model_class"], kw["size_min"], config["scale"]) == ("SwinIR", "SwinIR", 16, 4)
    assert kw["hyperparameters"]["window_size"] == 4 and "norm_layer" not in kw["hyperparameters"]  # a default
    teacher = load_model(teachers["swinir"])
    x = torch.rand(1, 3, 10, 13)  # under SwinIR's minimum of 16: padded inside, cropped back
    with torch.no_grad():
        out = teacher(x)
        padded = files["swinir"][1](torch.nn.functional.pad(x, (0, 3, 0, 6), mode="reflect"))
    assert out.shape == (1, 3, 40, 52)
    assert torch.equal(out, padded[..., :40, :52])


def test_changed_hyperparameters_are_refused_in_one_line(teachers, tmp_path):
    """Negative control of the rebuild: a config that builds another network does not load its weights."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(teachers["swinir"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["kwargs"]["hyperparameters"]["embed_dim"] = 16
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(GankdError, match=r"has shape .* in the file but .* in the model") as info:
        load_model(bad)
    assert "\n" not in str(info.value)


def test_realesrgan_layout_becomes_gankd_rrdbnet(tmp_path):
    from gankd.distill.models.folder import ModelConfig

    torch.manual_seed(0)
    ours = ModelConfig(arch="rrdbnet", kwargs={"num_feat": 16, "num_block": 1, "num_grow_ch": 32}).build().eval()
    path = tmp_path / "esrgan.pth"
    torch.save({"params_ema": ours.state_dict()}, path)
    model, config = import_spandrel(path)
    assert config.arch == "rrdbnet" and config.provenance["spandrel_architecture"] == "ESRGAN"
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))


def test_feature_tap_is_named_and_checked(teachers):
    teacher = load_model(teachers["swinir"])
    x = torch.rand(2, 3, 33, 17)
    _, (placeholder,) = teacher.forward_with_features(x)
    assert placeholder.shape == (2, 1, 1, 1)
    teacher.set_feature_tap("conv_after_body")  # SwinIR's trunk output, at LR size
    out, (feat,) = teacher.forward_with_features(x)
    with torch.no_grad():
        assert torch.equal(out, teacher(x))
    assert feat.shape == (2, 12, 33, 17)  # SwinIR pads to its window inside; the tap is cropped back
    with pytest.raises(GankdError, match=r"has no module 'nope'; its top-level modules are conv_first"):
        teacher.set_feature_tap("nope")


def test_teacher_cache_key_depends_on_the_tap(teachers):
    teacher = load_model(teachers["plksr"])
    x = torch.rand(2, 3, 8, 8)
    plain = _cache_key(teacher, (x,))
    teacher.set_feature_tap("feats.0")
    assert _cache_key(teacher, (x,)) != plain


def _recipe(tmp_path: Path, teacher: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
teacher: {teacher}
out_dir: {tmp_path / 'runs' / name}
mode: sdakd
family: srvgg
num_feat: 8
depth: 1
init: random
width: 1.0
teacher_d_feat: 8
d_width: 0.5
n1: 1
n2: 1
n3: 1
steps_per_epoch: 2
batch_size: 2
hr_size: 32
train_crops: 4
val_crops_per_image: 1
select_by: psnr
teacher_cache_dir: {tmp_path / 'cache'}
device: cpu
threads: 1
log_every: 1
""")
    return path


@pytest.mark.parametrize("name", list(FAMILIES))
def test_distil_then_export(name, teachers, tmp_path, capsys, one_thread):
    """Output KD, both discriminators and selection on a foreign teacher; the student exports like any other."""
    from gankd.export.cli import export_main

    recipe = _recipe(tmp_path, teachers[name], name)
    assert distill_main(["run", str(recipe)]) == 0
    log = "".join(capsys.readouterr())
    run = tmp_path / "runs" / name
    report = (run / "report.md").read_text()
    if FAMILIES[name][2] == "spandrel":
        assert "notice: feature KD is off: the teacher is a spandrel" in log
        assert "feature KD: off (a spandrel teacher has no feature" in report
    else:
        assert "notice: feature KD is off" not in log  # gankd's own srvgg_compact has its features
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("stage3" == r.get("stage") for r in records)
    assert (run / "student" / "model.safetensors").is_file()
    assert export_main([str(run / "student"), "--out", str(tmp_path / "art"), "--formats", "onnx"]) == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["parity"]["passed"]


def test_named_tap_turns_feature_kd_on(teachers, tmp_path, capsys, one_thread):
    recipe = _recipe(tmp_path, teachers["swinir"], "tap")
    assert distill_main(["run", str(recipe), "teacher_feature=conv_after_body"]) == 0
    assert "feature KD is off" not in "".join(capsys.readouterr())
    records = [json.loads(line) for line in (tmp_path / "runs" / "tap" / "metrics.jsonl").read_text().splitlines()]
    assert any("mlp" in json.dumps(r) for r in records if r.get("stage") == "stage2")
    report = (tmp_path / "runs" / "tap" / "report.md").read_text()
    assert "teacher feature: module `conv_after_body`" in report


def test_teacher_feature_on_an_own_teacher_is_refused(tmp_path, capsys):
    from gankd.distill.models.folder import ModelConfig, save_model

    config = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1, "upscale": 4})
    save_model(tmp_path / "own", config.build(), config)
    recipe = _recipe(tmp_path, tmp_path / "own", "own")
    assert distill_main(["run", str(recipe), "teacher_feature=body.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: teacher_feature names a module of a foreign \(spandrel\) teacher; .*", err)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def _one_line(args, capsys) -> str:
    assert distill_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_files_get_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    missing = _one_line(["import-teacher", "--from", "spandrel", str(tmp_path / "nope.pth"), *out], capsys)
    assert "does not exist" in missing
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert "reads .pth, .pt, .ckpt, .safetensors files, not '.onnx'" in _one_line(
        ["import-teacher", "--from", "spandrel", str(tmp_path / "model.onnx"), *out], capsys)
    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "unknown.pth")
    assert "detects no architecture of its main registry" in _one_line(
        ["import-teacher", "--from", "spandrel", str(tmp_path / "unknown.pth"), *out], capsys)
    from spandrel.architectures.Compact import Compact

    torch.save(Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=1).state_dict(), tmp_path / "gray.pth")
    assert "1 input and 1 output channels; gankd's SR tasks are RGB" in _one_line(
        ["import-teacher", "--from", "spandrel", str(tmp_path / "gray.pth"), *out], capsys)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "unknown.pth").read_bytes()[:100])
    assert "truncated or corrupted" in _one_line(
        ["import-teacher", "--from", "spandrel", str(tmp_path / "cut.pth"), *out], capsys)
    assert not (tmp_path / "out").exists()


def test_malicious_pickle_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"params": {"w": torch.zeros(1)}, "evil": _Payload(str(marker))}, tmp_path / "evil.pth")
    err = _one_line(["import-teacher", "--from", "spandrel", str(tmp_path / "evil.pth"), "--out",
                     str(tmp_path / "out")], capsys)
    assert "refusing to load" in err and "never code" in err
    assert not marker.exists()


def test_multiple_and_square_requirements_pad_then_crop():
    from gankd.distill.models.folder import ModelConfig

    config = ModelConfig(arch="spandrel", kwargs={"architecture": "PLKSR", "model_class": "PLKSR",
                                                  "hyperparameters": {"dim": 8, "n_blocks": 1}, "scale": 4,
                                                  "size_multiple": 8, "square": True})
    model = config.build().eval()
    assert model.padded_size(10, 13) == (16, 16) and model.padded_size(16, 3) == (16, 16)
    x = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        out = model(x)
        direct = model.net(torch.nn.functional.pad(x, (0, 3, 0, 6), mode="reflect"))
        tiny = model(torch.rand(1, 3, 2, 3))  # pads larger than the image: replicate, not reflect
    assert torch.equal(out, direct[..., :40, :52])
    assert tiny.shape == (1, 3, 8, 12)
