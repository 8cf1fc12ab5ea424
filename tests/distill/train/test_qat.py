"""Quantization-aware distillation (gankd.distill.train.qat) and the INT8 export of a QAT student: the fake quantization
mirrors the graph ORT's quantizer writes, the export writes the learned ranges (not new ones), its parity is against
the fake-quantized model, the teacher gate judges what users see, and the run's qat stage makes such students."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from gankd.distill import ModelConfig, load_model, save_model
from gankd.distill.train import qat
from gankd.distill.errors import GankdError
from gankd.export import exporter, formats, int8, parity
from gankd.export.parity import real_lr_batch
from gankd.serve.backends import ort_session

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

SRVGG = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 16, "num_conv": 4, "upscale": 4}, scale=4)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = SRVGG.build().eval()
    with torch.no_grad():  # PReLU slopes and biases away from their inits, outputs around 0.5
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.body[-1].bias.add_(0.05)
    model.gankd_config = SRVGG
    return model


def _qat_student(tmp_path, seed: int = 0, **provenance):
    """A student folder as a run with n_qat leaves it: the fp32 student in it, and in ``int8_qat/`` the QAT weights
    (the wrapper's ranges set on real crops, then a few fake-quantized steps) with their ranges in the provenance.
    Returns (the student folder, the QAT record)."""
    model = _model(seed)
    folder = save_model(tmp_path / f"student{seed}", model, ModelConfig(
        arch=SRVGG.arch, kwargs=SRVGG.kwargs, scale=4, provenance={"run": "t", "step": 0, **provenance}))
    wrapper = qat.wrap(copy.deepcopy(model), "srvgg")
    qat.begin(wrapper, [real_lr_batch((4, 3, 24, 24), 4)])
    opt = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
    x = real_lr_batch((4, 3, 24, 24), 4, split="train")
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.l1_loss(wrapper(x), torch.nn.functional.interpolate(x, scale_factor=4.0)).backward()
        opt.step()
    plain, record = qat.unwrap(wrapper.eval())
    save_model(folder / qat.FOLDER, plain, ModelConfig(arch=SRVGG.arch, kwargs=SRVGG.kwargs, scale=4, provenance={
        "int8_qat": record, "run": "t", "step": 3, **provenance}))
    return folder, record


def test_wrapper_is_the_plain_model_until_qat_begins():
    model = _model()
    wrapper = qat.wrap(copy.deepcopy(model), "srvgg").eval()
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(wrapper(x), model(x))
        assert qat.unwrap(wrapper)[1] is None  # off: nothing to record
        qat.begin(wrapper, [x])
        wrapper.eval()
        quantized = wrapper(x)
    assert not torch.equal(quantized, model(x)) and (quantized - model(x)).abs().max() < 0.1
    # 4 quantized convs of 6 (first and last fp32), each in + out, and the three tail tensors
    assert len(wrapper.quantized) == 4 and len(wrapper.fq) == 11


def test_validation_never_moves_the_ranges():
    wrapper = qat.wrap(_model(), "srvgg")
    qat.begin(wrapper, [torch.rand(2, 3, 12, 12)])
    before = qat.unwrap(wrapper.eval())[1]
    with torch.no_grad():
        wrapper(torch.rand(2, 3, 12, 12) * 3)  # far outside the calibrated range
    assert qat.unwrap(wrapper)[1] == before
    wrapper.train()
    with torch.no_grad():
        wrapper(torch.rand(2, 3, 12, 12) * 3)
    assert qat.unwrap(wrapper.eval())[1] != before


def test_weight_fake_quant_is_ort_quantization(tmp_path):
    """The QAT weight grid is the one ORT writes: the INT8 file's int8 weights x scales equal fake_quant_weight."""
    model = _model()
    path = tmp_path / "m.onnx"
    formats.export_onnx(model, path, 17, _sr_signature())
    int8.quantize(path, tmp_path / "m.int8.onnx", [real_lr_batch((1, 3, 16, 16), 4).numpy()], qat.recipe_for("srvgg"))
    graph = onnx.load(str(tmp_path / "m.int8.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv = model.body[2]  # the first quantized conv
    q, scale = inits["body.2.weight_quantized"], inits["body.2.weight_scale"]
    ort_weights = q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    ours = qat.fake_quant_weight(conv.weight.detach(), qat.recipe_for("srvgg")).numpy()
    assert np.abs(ort_weights - ours).max() <= 1e-6 * np.abs(ours).max()
    assert np.abs(q).max() <= 64


def _sr_signature():
    from gankd.export.manifest import INPUT_NAME, OUTPUT_NAME
    from gankd.export.tasks import Port, Signature

    return Signature(inputs=(Port(INPUT_NAME, {2: "H", 3: "W"}),), output=Port(OUTPUT_NAME, {2: "H_out", 3: "W_out"}),
                     examples=(torch.rand(2, 3, 16, 16),))


def test_export_writes_the_learned_ranges_and_checks_parity_against_the_fake_quant_model(tmp_path):
    student, record = _qat_student(tmp_path)
    settings = exporter.ExportSettings(formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16",
                                       int8_min_speedup=0.0, int8_min_psnr_db=0.0)  # the gate is not tested here
    manifest = exporter.export_model(student, tmp_path / "art", settings, log=lambda _m: None)
    assert manifest["int8"]["written"], manifest["int8"]
    info = manifest["files"]["onnx-int8"]["quantization"]
    assert info["qat"]["recipe"] == record["recipe"] and info["calibration"] is None
    # the scales in the file are the learned ones, tensor for tensor
    graph = onnx.load(str(tmp_path / "art" / "model.int8.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    tensors = int8._srvgg_tensors(onnx.load(str(tmp_path / "art" / "model.onnx")).graph)
    for point, learned in record["activations"].items():
        name = tensors[point]
        scale_name = next(n.input[1] for n in graph.node if n.op_type == "QuantizeLinear"
                          and (n.input[0] == name or (point == "output" and n.input[0] == "output_QuantizeLinear_Input")))
        assert float(inits[scale_name]) == pytest.approx(learned["scale"], rel=1e-6)
    results = [r for r in manifest["parity"]["results"] if r["artifact"] == "onnx-int8"]
    assert results and all(r["passed"] for r in results)
    assert "fake-quantized" in manifest["parity"]["references"]["onnx-int8"]
    layers = info["qat"]["layers"]
    assert layers["passed"] and layers["worst"]["max_lsb"] <= 1.0
    # the fp32 files are the fp32 student's, not the QAT weights'
    fp32 = ort_session(tmp_path / "art" / "model.onnx").run(None, {"input": parity.parity_inputs(4)[0].numpy()})[0]
    with torch.no_grad():
        assert np.abs(fp32 - load_model(student)(parity.parity_inputs(4)[0]).numpy()).max() < 1e-4


def test_recalibrating_a_qat_student_breaks_its_parity(tmp_path):
    """Negative control: the same weights quantized with freshly calibrated ranges are not the model QAT trained."""
    student, record = _qat_student(tmp_path)
    model = load_model(student / qat.FOLDER)
    path = tmp_path / "m.onnx"
    formats.export_onnx(model, path, 17, _sr_signature())
    calib = [real_lr_batch((1, 3, 16, 16), 4).numpy()]
    int8.quantize(path, tmp_path / "fresh.int8.onnx", calib, qat.recipe_for("srvgg"))
    int8.quantize(path, tmp_path / "learned.int8.onnx", calib, qat.recipe_for("srvgg"),
                  int8.qat_overrides(path, "srvgg", record))
    reference = qat.restore(copy.deepcopy(model), "srvgg", record)
    x = parity.parity_inputs(4)[0]
    with torch.no_grad():
        ref = reference(x).numpy()
    psnrs = {}
    for name in ("fresh", "learned"):
        out = ort_session(tmp_path / f"{name}.int8.onnx").run(None, {"input": x.numpy()})[0]
        psnrs[name] = parity.compare(ref, out)[1]
        layers = int8.qat_layer_check(tmp_path / f"{name}.int8.onnx", path, reference, x)
        assert int8.qat_layers_pass(layers) == (name == "learned"), layers
    assert psnrs["learned"] > psnrs["fresh"] + 10, psnrs


def test_a_placement_that_does_not_mirror_the_graph_stops_the_export(tmp_path):
    _, record = _qat_student(tmp_path)
    model = _model()
    path = tmp_path / "m.onnx"
    formats.export_onnx(model, path, 17, _sr_signature())
    overrides = int8.qat_overrides(path, "srvgg", record)
    overrides.pop(next(iter(overrides)))  # a tensor ORT quantizes that QAT would not have trained
    with pytest.raises(GankdError, match="does not mirror the exported graph"):
        int8.quantize(path, tmp_path / "x.int8.onnx", [real_lr_batch((1, 3, 16, 16), 4).numpy()],
                      qat.recipe_for("srvgg"), overrides)


def test_restore_refuses_a_record_of_another_recipe_or_shape():
    _, record = qat.unwrap(_begun())
    with pytest.raises(GankdError, match="not this gankd's INT8 recipe"):
        qat.restore(_model(), "srvgg", {**record, "recipe": {**record["recipe"], "reduce_range": False}})
    with pytest.raises(GankdError, match="names activations"):
        acts = dict(record["activations"])
        acts.pop("base")
        qat.restore(_model(), "srvgg", {**record, "activations": acts})


def _begun():
    wrapper = qat.wrap(_model(), "srvgg")
    qat.begin(wrapper, [torch.rand(2, 3, 12, 12)])
    return wrapper.eval()


def test_qat_is_refused_for_families_without_a_wrapper():
    from gankd.distill.train.recipe import recipe_from_dict

    with pytest.raises(GankdError, match="no QAT wrapper yet"):
        recipe_from_dict({"family": "rrdb", "n_qat": 1})
    with pytest.raises(GankdError, match="n_qat: mode train"):
        recipe_from_dict({"mode": "train", "arch": "rrdbnet", "family": "srvgg", "n_qat": 1})


# --- the teacher gate -------------------------------------------------------------------------------------------

def test_teacher_gate_judges_int8_by_what_it_loses_to_the_teacher(tmp_path):
    """With the teacher known, INT8 is written when it loses at most --int8-max-loss-db of fp32's PSNR to the
    teacher on held-out crops, clean and degraded; a bar it cannot meet (negative control) leaves it out."""
    teacher_dir = save_model(tmp_path / "teacher", _model(seed=5), SRVGG)
    student, _ = _qat_student(tmp_path, teacher_dir=str(teacher_dir))
    ok = exporter.export_model(student, tmp_path / "a", exporter.ExportSettings(
        formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16", int8_min_speedup=0.0,
        int8_max_loss_db=100.0), log=lambda _m: None)
    gate = ok["int8"]["gate"]
    assert ok["int8"]["written"] and gate["judged_by"] == "teacher"
    assert set(gate["teacher"]["fp32"]) == {"clean", "degraded"} and gate["teacher"]["crops"] > 0
    text = int8.outcome_markdown(ok["int8"])
    assert text.startswith("INT8 (learned in QAT): **written**") and "| degraded |" in text
    table = _int8_table([f"qat={tmp_path / 'a'}"], tmp_path / "int8.json")
    assert table["rows"][0]["INT8 from"] == "QAT" and table["rows"][0]["Δ clean"] is not None
    assert (tmp_path / "int8.md").read_text().count("| qat |") == 1
    assert gate["loss_db"] == pytest.approx(max(gate["teacher"]["fp32"][k] - gate["teacher"]["int8"][k]
                                                for k in ("clean", "degraded")), abs=1e-3)
    lines = []
    refused = exporter.export_model(student, tmp_path / "b", exporter.ExportSettings(
        formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16", int8_min_speedup=0.0,
        int8_max_loss_db=0.0, teacher=teacher_dir), log=lines.append)
    # INT8 is never better than fp32 on every crop group at once here, so a 0 dB bar refuses it, or it passes only
    # where it truly loses nothing
    if not refused["int8"]["written"]:
        assert any(line.startswith("INT8 not written: PSNR to the teacher") for line in lines)
    else:
        assert refused["int8"]["gate"]["loss_db"] <= 0


def _int8_table(items, out):
    """demos/int8_table.py, the script that writes INT8 results files, on the given artifacts."""
    import importlib.util

    path = REPO_ROOT / "demos" / "int8_table.py"
    spec = importlib.util.spec_from_file_location("int8_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([*items, "--out", str(out)])
    return json.loads(out.read_text())


def test_without_a_teacher_the_gate_is_psnr_to_fp32_and_says_so(tmp_path):
    student, _ = _qat_student(tmp_path, teacher_dir=str(tmp_path / "gone"))
    lines = []
    manifest = exporter.export_model(student, tmp_path / "a", exporter.ExportSettings(
        formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16", int8_min_speedup=0.0,
        int8_min_psnr_db=0.0), log=lines.append)
    assert manifest["int8"]["gate"]["judged_by"] == "fp32"
    assert any("no teacher known" in line and "gone is not here" in line for line in lines)


# --- the run's qat stage ----------------------------------------------------------------------------------------

def _tiny_teacher(tmp_path):
    config = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 16, "num_block": 1, "num_grow_ch": 8},
                         task="sr", scale=4)
    torch.manual_seed(1)
    return save_model(tmp_path / "teacher", config.build(), config)


def _recipe(tmp_path, teacher_dir, pretrained_dir, **overrides):
    from gankd.distill.train.recipe import recipe_from_dict

    return recipe_from_dict({
        "name": "qat", "teacher": str(teacher_dir), "out_dir": str(tmp_path / "run"), "family": "srvgg",
        "init": "pretrained", "init_from": str(pretrained_dir), "width": 1.0, "teacher_d_feat": 8, "d_width": 0.5, "n1": 1,
        "n2": 1, "n3": 0, "n_qat": 1, "steps_per_epoch": 2, "batch_size": 2, "hr_size": 32, "train_crops": 8,
        "val_crops_per_image": 1, "select_by": "psnr", "checkpoint_every": 1, "log_every": 1, "threads": 1,
        "ema_decay": 0.9, "feature_kd": False, **overrides})


def test_run_ends_with_a_qat_student_that_exports_its_learned_int8(tmp_path):
    from gankd.distill.train.loop import run

    teacher_dir = _tiny_teacher(tmp_path)
    pretrained = save_model(tmp_path / "pre", _model(), SRVGG)
    logs = []
    run_dir = run(_recipe(tmp_path, teacher_dir, pretrained), log=logs.append)
    fp32 = load_model(run_dir / "student").gankd_config.provenance
    quantized = load_model(run_dir / "student" / qat.FOLDER).gankd_config.provenance
    assert "int8_qat" in quantized and "int8_qat" not in fp32 and quantized["step"] > fp32["step"]
    assert fp32["teacher_dir"] == quantized["teacher_dir"] == str(teacher_dir)
    assert any(line.startswith("qat: INT8 fake quantization on (4 convs, 11 activations") for line in logs)
    assert any("(best INT8 psnr_teacher" in line for line in logs)
    stages = [json.loads(line).get("stage") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stages[-1] == "qat" and "stage2" in stages
    manifest = exporter.export_model(run_dir / "student", tmp_path / "art", exporter.ExportSettings(
        formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16", int8_min_speedup=0.0,
        int8_max_loss_db=100.0), log=lambda _m: None)
    assert manifest["int8"]["gate"]["judged_by"] == "teacher"  # from the student's provenance
    assert "qat" in manifest["int8"]["quantization"]


def test_a_run_over_its_budget_still_ends_with_qat(tmp_path):
    from gankd.distill.train.loop import run

    teacher_dir = _tiny_teacher(tmp_path)
    pretrained = save_model(tmp_path / "pre", _model(), SRVGG)
    logs = []
    run_dir = run(_recipe(tmp_path, teacher_dir, pretrained, n2=5, max_minutes=1e-6), log=logs.append)
    assert any("going on to the qat stage" in line for line in logs)
    assert "int8_qat" in load_model(run_dir / "student" / qat.FOLDER).gankd_config.provenance


def test_qat_alone_fine_tunes_an_existing_student(tmp_path):
    """n2 = n3 = 0 with n_qat: QAT of a finished student (its folder as init_from)."""
    from gankd.distill.train.loop import run

    teacher_dir = _tiny_teacher(tmp_path)
    pretrained = save_model(tmp_path / "pre", _model(), SRVGG)
    logs = []
    run_dir = run(_recipe(tmp_path, teacher_dir, pretrained, n2=0), log=logs.append)
    assert "int8_qat" in load_model(run_dir / "student" / qat.FOLDER).gankd_config.provenance
    # the warm start, validated, is the fp32 student QAT started from
    assert torch.equal(load_model(run_dir / "student").body[0].weight, load_model(pretrained).body[0].weight)
    assert any("validating the warm start" in line for line in logs)
    assert not (run_dir / "teacher_d").exists()


@pytest.mark.slow
def test_resume_after_kill_9_in_the_qat_stage_replays_the_same_run(tmp_path):
    """A run killed during QAT resumes where its last checkpoint was (fake-quantization ranges, observers, the qat
    selection) and ends bit for bit as the run that was never killed."""
    import os
    import subprocess

    import yaml

    from helpers.runs import DISTILL_CLI, kill_run_after, metrics_lines

    teacher_dir = _tiny_teacher(tmp_path)
    pretrained = save_model(tmp_path / "pre", _model(), SRVGG)
    base = {"name": "qat", "teacher": str(teacher_dir), "family": "srvgg", "init": "pretrained",
            "init_from": str(pretrained), "width": 1.0, "teacher_d_feat": 8, "d_width": 0.5, "n1": 1, "n2": 1,
            "n3": 0, "n_qat": 3, "steps_per_epoch": 4, "batch_size": 2, "hr_size": 32, "train_crops": 8,
            "val_crops_per_image": 1, "select_by": "psnr", "checkpoint_every": 1, "log_every": 1, "threads": 1,
            "ema_decay": 0.9, "feature_kd": False}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / name)}))
    subprocess.run([*DISTILL_CLI, "run", str(tmp_path / "a.yaml")], check=True, capture_output=True, env=env,
                   timeout=600)
    stages = [r.get("stage") for r in metrics_lines(tmp_path / "a" / "metrics.jsonl")]
    first_qat = stages.index("qat")
    saved_step = kill_run_after(tmp_path / "b.yaml", tmp_path / "b", first_qat + 3, env)
    assert saved_step > 8  # stage 1 and stage 2 are 8 steps: the kill came inside qat
    resumed = subprocess.run([*DISTILL_CLI, "run", str(tmp_path / "b.yaml"), "--resume"], capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_lines(tmp_path / "a" / "metrics.jsonl") == metrics_lines(tmp_path / "b" / "metrics.jsonl")
    a, b = (load_model(tmp_path / n / "student" / qat.FOLDER) for n in ("a", "b"))
    assert a.gankd_config.provenance["int8_qat"] == b.gankd_config.provenance["int8_qat"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_provenance_teacher_of_another_architecture_is_not_used(tmp_path):
    """teacher_dir is a path as the run saw it: where it names another model here, the gate does not judge by it."""
    other = save_model(tmp_path / "other", _model(seed=5), SRVGG)
    student, _ = _qat_student(tmp_path, teacher_dir=str(other), teacher_arch="rrdbnet")
    lines = []
    manifest = exporter.export_model(student, tmp_path / "a", exporter.ExportSettings(
        formats=("onnx",), int8=True, calib_count=2, opt_shape="1x3x16x16", int8_min_speedup=0.0,
        int8_min_psnr_db=0.0), log=lines.append)
    assert manifest["int8"]["gate"]["judged_by"] == "fp32"
    assert any("holds a srvgg_compact, the run's teacher was a rrdbnet" in line for line in lines)
