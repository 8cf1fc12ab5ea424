"""`gankd-distill search`: the candidate grid, the Pareto front, the training rule, and one real tiny search run
through the CLI (ONNX Runtime timing, 2 steps of L1 distillation per candidate, 16x16 inputs)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from gankd.distill import GankdError, ModelConfig, build_student, load_model, save_model
from gankd.distill.cli import main
from gankd.distill.models.cost import count_params
from gankd.distill.train.recipe import recipe_from_dict
from gankd.distill.tools.search import SPAN_FEATS, WARM_SHAPES, Candidate, _arch_key, candidates, load_candidates, pareto_front, training_set

TINY_RRDB = {"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8}
# A few candidates of every kind keep the search under ~15 s on a loaded 2-core machine.
TINY_CANDIDATES = [
    {"family": "rrdb", "depth": 1},
    {"family": "rrdb", "width": 0.5, "depth": 2},
    {"family": "rrdb", "depth": 1, "up_feat": 8, "name": "thin-upsampler"},
    {"family": "srvgg", "num_feat": 8, "depth": 2},
]


def _rrdb_config(num_block: int = 2) -> ModelConfig:
    return ModelConfig(arch="rrdbnet", kwargs={**TINY_RRDB, "num_block": num_block}, task="sr", scale=4)


def _dominates(a: dict, b: dict) -> bool:
    return (a["latency_ms"] <= b["latency_ms"] and a["psnr_to_teacher"] >= b["psnr_to_teacher"]
            and (a["latency_ms"] < b["latency_ms"] or a["psnr_to_teacher"] > b["psnr_to_teacher"]))


# ----------------------------------------------------------------------------------------------- pure functions


def test_pareto_front_hand_made_points():
    points = [(1.0, 10.0), (2.0, 12.0), (2.0, 11.0), (3.0, 12.0), (1.0, 10.0), (0.5, 5.0), (None, 20.0),
              (4.0, math.nan), (5.0, 13.0)]
    # 2 is beaten by 1 on PSNR at equal latency, 3 by 1 on latency at equal PSNR; 0 and 4 tie and both stay;
    # 6 and 7 have no usable value
    assert pareto_front(points) == [0, 1, 4, 5, 8]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 30.0), (2.0, 20.0), (3.0, 25.0)]) == [0]


def test_training_set_takes_all_under_budget_and_the_fastest_above():
    latencies = [5.0, 50.0, 9.0, 30.0, 10.0, 12.0]
    assert training_set(latencies, budget_ms=10.0, extra=2) == [0, 2, 3, 4, 5]
    assert training_set(latencies, budget_ms=10.0, extra=0) == [0, 2, 4]
    assert training_set(latencies, budget_ms=1.0, extra=1) == [0]


@pytest.mark.parametrize("num_block, expected", [
    (2, {"rrdb-d1-up16", "rrdb-d1-up8", "rrdb-d2-up8", "rrdb-C1/2-d2", "rrdb-C1/2-d1", "rrdb-C1/4-d2",
         "rrdb-C1/4-d1"}),
    (4, {"rrdb-d1-up16", "rrdb-d1-up8", "rrdb-d2-up16", "rrdb-d2-up8", "rrdb-d4-up8", "rrdb-C1/2-d4",
         "rrdb-C1/2-d2", "rrdb-C1/4-d4", "rrdb-C1/4-d2"}),
    (9, {"rrdb-d1-up16", "rrdb-d1-up8", "rrdb-d2-up16", "rrdb-d2-up8", "rrdb-d4-up16", "rrdb-d4-up8",
         "rrdb-d8-up16", "rrdb-d8-up8", "rrdb-C1/2-d9", "rrdb-C1/2-d4", "rrdb-C1/4-d9", "rrdb-C1/4-d4"}),
])
def test_candidate_grid_is_distinct_and_respects_the_teacher_depth(num_block, expected):
    teacher = _rrdb_config(num_block)
    grid = candidates(teacher)
    rrdb = [c for c in grid if c.family == "rrdb"]
    assert {c.name for c in rrdb} == expected  # the full-width, full-depth copy of the teacher is left out
    assert all(c.init == "teacher" and 1 <= c.depth <= num_block for c in rrdb)
    srvgg = [c for c in grid if c.family == "srvgg" and c.init == "random"]
    assert {(c.num_feat, c.depth) for c in srvgg} == {(f, n) for f in (32, 48, 64) for n in (8, 16)}
    assert all(c.width == 1.0 for c in srvgg)
    warm = [c for c in grid if c.init == "pretrained"]  # from the wheel's animevideov3 (64 features, 16 convs)
    assert {(c.num_feat, c.depth) for c in warm} == set(WARM_SHAPES)
    assert all(c.family == "srvgg" and c.name.endswith("-warm") for c in warm)
    assert {c.num_feat for c in grid if c.family == "span"} == set(SPAN_FEATS)
    keys = [(_arch_key(c.config(teacher)), c.init) for c in grid]
    assert len(set(keys)) == len(keys) and len({c.name for c in grid}) == len(grid)


def test_srvgg_teacher_gets_srvgg_students_without_its_own_arch_and_a_discriminator_is_refused():
    teacher = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 32, "num_conv": 8, "upscale": 4}, scale=4)
    names = [c.name for c in candidates(teacher) if c.init == "random" and c.family == "srvgg"]
    assert names == ["srvgg-32-16", "srvgg-48-8", "srvgg-48-16", "srvgg-64-8", "srvgg-64-16"]
    with pytest.raises(GankdError, match="search needs an SR teacher"):
        candidates(ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": 8}, scale=None))


def test_candidates_file_is_deduplicated_and_validated(tmp_path):
    teacher = _rrdb_config(2)
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"family": "rrdb", "depth": 1}, {"family": "rrdb", "depth": 1, "up_feat": 16},
                                {"family": "srvgg", "num_feat": 8, "depth": 2}]))
    grid = load_candidates(path, teacher)  # up_feat 16 = the default upsampler of a width-1 student: a duplicate
    assert [(c.name, c.init) for c in grid] == [("rrdb-d1", "teacher"), ("srvgg-8-2", "random")]
    path.write_text(yaml.safe_dump([{"family": "rrdb", "depth": 3}]))
    with pytest.raises(GankdError, match="candidate 0: depth must be between 1 and the teacher's 2"):
        load_candidates(path, teacher)
    path.write_text(yaml.safe_dump([{"family": "rrdb", "colour": 1}]))
    with pytest.raises(GankdError, match="unknown key 'colour'"):
        load_candidates(path, teacher)


def test_srvgg_fragment_is_a_valid_recipe():
    fragment = Candidate("s", "srvgg", 1.0, 8, None, 32, "random").recipe_fragment()
    recipe = recipe_from_dict(dict(fragment))
    assert (recipe.family, recipe.width, recipe.num_feat, recipe.depth, recipe.init) == ("srvgg", 1.0, 32, 8, "random")


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def search_root(tmp_path_factory):
    """A folder with the tiny teacher (seed 0) under teacher/ and candidates.yaml (not conftest's tiny_teacher)."""
    root = tmp_path_factory.mktemp("search")
    config = _rrdb_config(2)
    torch.manual_seed(0)
    save_model(root / "teacher", config.build(), config)
    (root / "candidates.yaml").write_text(yaml.safe_dump(TINY_CANDIDATES))
    return root


def _search(root, *args):
    threads = torch.get_num_threads()
    try:
        return main(["search", str(root / "teacher"), "--shape", "1x3x16x16", "--threads", "1",
                     "--candidates", str(root / "candidates.yaml"), *args])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_search(search_root):
    out = search_root / "out"
    rc = _search(search_root, "--budget-ms", "100000", "--steps", "2", "--out", str(out))
    assert rc == 0
    return out, json.loads((out / "search.json").read_text())


def test_search_cli_writes_json_png_and_best_yaml(tiny_search):
    out, result = tiny_search
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| psnr_to_teacher |" in (out / "search.md").read_text()
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["rrdb-d1", "rrdb-C1/2-d2", "thin-upsampler", "srvgg-8-2"]
    assert result["backend"] == "ort" and all(r["backend"] == "ort" for r in rows)
    assert all(r["trained"] and r["steps"] == 2 and r["latency_ms"] > 0 for r in rows)
    assert all(math.isfinite(r["psnr_to_teacher"]) for r in rows)
    assert math.isfinite(result["bicubic_psnr"]) and result["teacher_row"]["latency_ms"] > 0
    best = max(rows, key=lambda r: r["psnr_to_teacher"])
    assert result["best"] == best["name"]


def test_search_front_is_non_dominated_and_complete(tiny_search):
    rows = tiny_search[1]["rows"]
    front = [r for r in rows if r["on_front"]]
    assert front and [r["name"] for r in front] == tiny_search[1]["front"]
    for f in front:
        assert not any(_dominates(r, f) for r in rows if r is not f), f["name"]
    for r in rows:
        if not r["on_front"]:
            assert any(_dominates(f, r) for f in front), r["name"]


def test_best_yaml_is_a_recipe_fragment_that_builds_the_student(tiny_search, search_root):
    out, result = tiny_search
    fragment = yaml.safe_load((out / "best.yaml").read_text())
    assert set(fragment) <= {"family", "width", "depth", "up_feat", "num_feat", "init", "blocks"}
    recipe = recipe_from_dict({**fragment, "teacher": str(search_root / "teacher")})
    teacher = load_model(recipe.teacher)
    student, _ = build_student(teacher if recipe.init == "teacher" else teacher.gankd_config, width=recipe.width,
                               depth=recipe.depth, family=recipe.family, num_feat=recipe.num_feat, init=recipe.init,
                               up_feat=recipe.up_feat, blocks=recipe.blocks)
    best = next(r for r in result["rows"] if r["name"] == result["best"])
    assert count_params(student) == best["params"]


def test_search_fails_in_one_line_when_nothing_fits_the_budget(search_root, capsys):
    out = search_root / "none"
    assert _search(search_root, "--budget-ms", "0.000001", "--steps", "2", "--out", str(out)) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    fastest = min(json.loads((out / "search.json").read_text())["rows"], key=lambda r: r["latency_ms"])
    assert error.startswith("error: no candidate is within the 1e-06 ms budget")
    assert f"the fastest, {fastest['name']}, takes {fastest['latency_ms']:.2f} ms" in error
    assert "| latency_ms |" in captured.out and not (out / "best.yaml").exists()


@pytest.mark.parametrize("args, message", [
    (["missing", "--budget-ms", "5"], "does not exist"),
    (["teacher", "--budget-ms", "0"], "--budget-ms must be a positive number"),
    (["teacher", "--budget-ms", "5", "--shape", "1x3x16"], "shape must look like NxCxHxW"),
    (["teacher", "--budget-ms", "5", "--shape", "1x4x16x16"], "shape has 4 channels"),
    (["teacher", "--budget-ms", "5", "--steps", "2", "--minutes", "1"], "not both"),
    (["disc", "--budget-ms", "5"], "search needs an SR teacher"),
])
def test_search_bad_input_is_one_line(search_root, capsys, args, message):
    disc = ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": 8}, scale=None)
    save_model(search_root / "disc", disc.build(), disc)
    args = [str(search_root / args[0]), *args[1:]]
    assert main(["search", *args, "--out", str(search_root / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
