"""Recipes: shipped ones load, bad keys and values are one-line errors naming them, overrides apply."""

from __future__ import annotations

import pytest
import yaml

from gankd.distill.errors import GankdError
from gankd.distill.train.recipe import RECIPES_DIR, Recipe, load_recipe, recipe_from_dict
from gankd.distill.train.stages import plan_stages
from gankd.distill.train.loop import task_kind


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load_and_plan(path):
    recipe = load_recipe(str(path))
    assert recipe.name == path.stem
    kind = task_kind(recipe)  # the teacher folders do not exist here: from arch (mode train) or family
    stages = plan_stages(recipe, have_teacher_d=bool(recipe.teacher_d), task_kind=kind)
    if recipe.mode == "train":
        expected = ["stage1"]
    elif recipe.discriminator == "none":  # MSE-only compression
        expected = ["stage2"]
    elif recipe.mode == "omgd":  # one online stage: the teacher G, D_T and the student every step
        expected = ["online"] if recipe.teacher_d else ["stage1", "online"]
    else:
        expected = ["stage2", "stage3"] if recipe.teacher_d else ["stage1", "stage2", "stage3"]
    expected += ["qat"] if recipe.n_qat else []
    assert [s.name for s in stages] == expected
    if recipe.mode == "train":  # generation trains on the adversarial term alone, restoration adds L1 to the GT
        assert stages[0].g_terms[0] == ("adv" if kind == "generate" else "l1")


@pytest.mark.parametrize("tag,width", [("c050", 0.5), ("c025", 0.25), ("c0125", 0.125)])
def test_gcfsr_paper_recipes_use_the_paper_settings(tag, width):
    recipe = load_recipe(f"gcfsr_sdakd_{tag}")
    assert recipe.width == width and recipe.init == "random" and recipe.family == "gcfsr"
    assert (recipe.lambda_mlp, recipe.lambda_adv) == (1.0, 0.1) and recipe.n1 == recipe.n2 == recipe.n3 == 30
    assert recipe.adversarial == recipe.teacher_adversarial == "logistic" and recipe.select_by == "fid"
    assert recipe.val_scales == [16, 32, 64]


def test_stylegan2_recipes_use_the_kddlgan_supplement_optimiser():
    for name in ("stylegan2_lfw100_teacher", "stylegan2_lfw100_kddlgan"):
        recipe = load_recipe(name)
        assert (recipe.beta1, recipe.beta2, recipe.lr_g, recipe.lr_d, recipe.batch_size) == (0.0, 0.99, 2e-3, 2e-3, 8)
        assert recipe.diffaugment == "color,translation,cutout"
    assert load_recipe("stylegan2_lfw100_kddlgan").kd_dlgan


@pytest.mark.parametrize("tag,width", [("c050", 0.5), ("c025", 0.25), ("c0125", 0.125)])
def test_paper_recipes_use_the_paper_settings(tag, width):
    recipe = load_recipe(f"realesrgan_x4_sdakd_{tag}")
    assert recipe.width == width and recipe.init == "random" and recipe.mode == "sdakd"
    assert (recipe.lambda_mlp, recipe.lambda_adv) == (1.0, 0.1)
    assert recipe.n1 == recipe.n2 == recipe.n3 > 0
    assert recipe.adversarial == "vanilla" and recipe.feature_kd and recipe.discriminator == "student"


def test_overrides_are_parsed_as_yaml_values():
    recipe = load_recipe("quickstart", ["width=0.125", "depth=null", "feature_kd=false", "name=x", "n2=0",
                                        "lr_g=5e-4"])
    assert (recipe.width, recipe.depth, recipe.feature_kd, recipe.name, recipe.n2) == (0.125, None, False, "x", 0)
    assert recipe.lr_g == 5e-4  # YAML 1.1 reads 5e-4 as a string; the float field takes it
    assert recipe.run_dir.as_posix() == "runs/x"


@pytest.mark.parametrize("data,message", [
    ({"widht": 0.5}, "unknown recipe key 'widht'"),
    ({"width": "half"}, "width: expected float, got 'half'"),
    ({"lr_g": "5e-4x"}, "lr_g: expected float"),
    ({"width": 0}, r"width: must be in \(0, 1\]"),
    ({"mode": "kd"}, "mode: 'kd' is not one of sdakd, scratch"),
    ({"adversarial": "hinge"}, "adversarial: 'hinge' is not one of"),
    ({"n1": -1}, "n1: must be >= 0"),
    ({"n2": 0, "n3": 0}, "nothing would train the student"),
    ({"batch_size": True}, "batch_size: expected int, got True"),
    ({"depth": 0}, "depth: must be >= 1 or null"),
    ({"teacher": None}, "teacher: null is not allowed"),
    ({"perceptual_layers": ["conv1_2"]}, "perceptual_layers: expected a mapping"),
    ({"mode": "scratch", "discriminator": "teacher"}, "needs mode: sdakd"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
])
def test_bad_recipes_name_the_problem(data, message):
    with pytest.raises(GankdError, match=message):
        recipe_from_dict(data)


def test_bad_files_and_overrides(tmp_path):
    (tmp_path / "bad.yaml").write_text("width: [0.5\n")
    with pytest.raises(GankdError, match="not valid YAML"):
        load_recipe(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(GankdError, match="a recipe is a mapping"):
        load_recipe(str(tmp_path / "list.yaml"))
    with pytest.raises(GankdError, match="is not key=value"):
        load_recipe("quickstart", ["width"])
    with pytest.raises(GankdError, match="neither a file nor a shipped recipe"):
        load_recipe("missing_recipe")
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(GankdError, match="not valid YAML"):
        load_recipe(str(tmp_path / "evil.yaml"))


def test_resolved_yaml_round_trips():
    recipe = load_recipe("quickstart", ["width=0.5"])
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert isinstance(recipe, Recipe)


@pytest.mark.parametrize("overrides,expected", [
    ({}, [("stage1", ("teacher_d",)), ("stage2", ("student", "adapter", "student_d")),
          ("stage3", ("student", "adapter", "student_d"))]),
    ({"teacher_d": "some/dir"}, [("stage2", ("student", "adapter", "student_d")),
                                 ("stage3", ("student", "adapter", "student_d"))]),
    ({"feature_kd": False}, [("stage1", ("teacher_d",)), ("stage2", ("student", "student_d")),
                             ("stage3", ("student", "student_d"))]),
    ({"n2": 0}, [("stage3", ("student", "adapter", "student_d"))]),  # random D_S: no D_T needed
    ({"discriminator": "teacher"}, [("stage1", ("teacher_d",)), ("stage2", ("student", "adapter")),
                                    ("stage3", ("student", "adapter", "teacher_d"))]),
    ({"mode": "scratch"}, [("stage2", ("student",)), ("stage3", ("student", "student_d"))]),
])
def test_stage_plans_of_the_ablations(overrides, expected):
    recipe = recipe_from_dict({"init": "random", **overrides})
    stages = plan_stages(recipe, have_teacher_d="teacher_d" in overrides)
    assert [(s.name, s.trains) for s in stages] == expected
    scratch = recipe.mode == "scratch"
    assert all(s.g_target == ("gt" if scratch else "teacher") for s in stages if s.name != "stage1")
    assert all(("adv" in s.g_terms) == (s.name == "stage3") for s in stages)


def test_stage1_cannot_be_skipped_without_a_teacher_d():
    with pytest.raises(GankdError, match="n1 is 0 but no teacher_d"):
        plan_stages(recipe_from_dict({"n1": 0}), have_teacher_d=False)


@pytest.mark.parametrize("name", ["../../etc", "", "/abs", "a/b", ".", "..", ".hidden", "x" * 129, "a\x00b"])
def test_run_name_stays_inside_runs(name):
    """Cases 1-2: a name is one folder under runs/, never an escape, the runs root itself or an absolute path."""
    with pytest.raises(GankdError, match="is not a run name") as info:
        load_recipe("quickstart", [f"name={name}"]) if "\x00" not in name else recipe_from_dict({"name": name})
    assert "\n" not in str(info.value)
    assert load_recipe("quickstart", ["name=ok-1.2_b"]).run_dir.as_posix() == "runs/ok-1.2_b"  # negative control


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines + [f"name: *a{levels - 1}"]) + "\n"


def test_yaml_alias_bomb_costs_nothing(tmp_path):
    """Case 4: a billion-laughs recipe is refused before it is built, in one bounded line."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    with pytest.raises(GankdError, match="expands to more than 100000 values") as info:  # refused before it is built
        load_recipe(str(path))
    assert len(str(info.value)) < 300
    with pytest.raises(GankdError, match="not valid YAML"):
        load_recipe("quickstart", [f"name={_bomb(7)}"])
    path.write_text("name: [&a [lol, lol, lol, lol, lol, lol], *a, *a, *a, *a, *a, *a]\n")  # small aliases load:
    # the bad value is then shown bounded
    with pytest.raises(GankdError, match="name: expected str") as info:
        load_recipe(str(path))
    assert len(str(info.value)) < 200
    path.write_text("a: &a [*a]\nname: x\n")
    with pytest.raises(GankdError, match="refers to itself"):
        load_recipe(str(path))


def test_huge_recipe_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as handle:
        handle.truncate(64 << 20)
    with pytest.raises(GankdError, match="too large for a recipe"):
        load_recipe(str(path))


def test_photo_degradation_keys():
    recipe = load_recipe("quickstart", ["degradation=photo", "degrade_clean=0.25", "jpeg_quality=[60, 90]"])
    mix = recipe.photo_mix()
    assert (mix.clean_share, mix.jpeg_quality, mix.kinds) == (0.25, (60.0, 90.0), ("jpeg", "noise", "blur", "resize"))
    for bad, message in (("degrade_kinds=[jpeg, sepia]", "'sepia' is not a degradation"),
                         ("jpeg_quality=[0, 90]", "within 1..100"), ("degrade_clean=1.5", "must be in"),
                         ("noise_sigma=[8, 1]", "lo <= hi")):
        with pytest.raises(GankdError, match=message):
            load_recipe("quickstart", ["degradation=photo", bad])


# ------------------------------------------------------------------------------------------------ base: inheritance


def test_base_inherits_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("name: parent\nwidth: 0.5\nn2: 3\nperceptual_layers: {conv1_2: 0.5}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nname: child\nn2: 7\n")  # relative to the child
    child = load_recipe(str(tmp_path / "child.yaml"))
    assert (child.name, child.width, child.n2, child.perceptual_layers) == ("child", 0.5, 7, {"conv1_2": 0.5})
    assert load_recipe(str(tmp_path / "child.yaml"), ["width=0.25"]).width == 0.25  # the command line wins
    (tmp_path / "shipped_child.yaml").write_text("base: quickstart\nname: mine\nn_qat: 0\n")
    mine, quickstart = load_recipe(str(tmp_path / "shipped_child.yaml")), load_recipe("quickstart")
    assert mine.n_qat == 0 and mine.family == quickstart.family and mine.lambda_adv == quickstart.lambda_adv


def test_bad_bases_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(GankdError, match="loops"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: no_such_recipe\n")
    with pytest.raises(GankdError, match="neither a file nor a shipped recipe"):
        load_recipe(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("base: [quickstart]\n")
    with pytest.raises(GankdError, match="base: must name a recipe"):
        load_recipe(str(tmp_path / "d.yaml"))
    (tmp_path / "sub").mkdir()  # a base path is next to the recipe, never a same-named file in the working dir
    (tmp_path / "sub" / "e.yaml").write_text("base: parent_here.yaml\nname: e\n")
    (tmp_path / "parent_here.yaml").write_text("name: p\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GankdError, match="neither a file nor a shipped recipe"):
        load_recipe(str(tmp_path / "sub" / "e.yaml"))
    with pytest.raises(GankdError, match="base= cannot be overridden"):
        load_recipe("quickstart", ["base=realesrgan_x4_sdakd_c025"])


def test_shipped_recipes_hold_only_what_differs():
    """A shipped recipe writes no key its base (or, without one, Recipe's defaults) already sets to that value:
    what a recipe file shows is what makes it that recipe."""
    import dataclasses

    from gankd.distill.train.recipe import _coerce, recipe_data

    defaults = dataclasses.asdict(Recipe())
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        own = yaml.safe_load(path.read_text())
        inherited = dataclasses.asdict(recipe_from_dict(recipe_data(own["base"]))) if "base" in own else defaults
        same = sorted(key for key, value in own.items() if key not in ("base", "name")
                      and _coerce(key, value) == inherited[key])
        assert not same, f"{path.name} repeats {same}"
