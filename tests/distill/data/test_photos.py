"""The photo pool (gankd.distill.data.photos): the train / held-out split by scene, the named pools `photos` and
`photos_holdout` as image sources, the one-line errors, licence reading, scene selection, and a whole fetch from
.deb files built here. Offline and fast: small generated images and fake manifests. The real download from the
Debian mirror runs only with GANKD_TEST_FETCH=1."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankd.distill.data import images
from gankd.distill.data import photos
from gankd.distill.errors import GankdError


def _image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _records(packages: dict[str, int]) -> list[dict]:
    return [{"file": f"{package}/s{i}.png", "scene": f"{package}/s{i}", "package": package}
            for package, n in packages.items() for i in range(n)]


@pytest.fixture
def pool(tmp_path, monkeypatch) -> Path:
    """A fetched pool of 13 + 11 scenes; scene `pa/s0` comes as two files (two resolutions)."""
    folder = tmp_path / "cache"
    records = _records({"pa": 13, "pb": 11})
    records.append({"file": "pa/s0_big.png", "scene": "pa/s0", "package": "pa"})
    for i, record in enumerate(records):
        _image(folder / record["file"], 40, 36, seed=i)
    (folder / photos.MANIFEST).write_text(json.dumps({"format": photos.FORMAT, "photos": records}))
    monkeypatch.setenv("GANKD_PHOTOS", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


# ----------------------------------------------------------------------------------------------- split


def test_split_is_by_scene_disjoint_per_package_and_deterministic():
    records = _records({"pa": 13, "pb": 11, "pc": 1})
    train, holdout = photos.split_scenes(records)
    assert not train & holdout and train | holdout == {r["scene"] for r in records}
    held = {p: sum(s.startswith(p + "/") for s in holdout) for p in ("pa", "pb", "pc")}
    assert held == {"pa": round(13 * 0.18), "pb": round(11 * 0.18), "pc": 0}
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert photos.split_scenes(shuffled) == (train, holdout)
    # another package fetched (or not) moves no scene of the others across
    _, holdout_more = photos.split_scenes(records + _records({"pd": 20}))
    assert {s for s in holdout_more if not s.startswith("pd/")} == holdout


def test_named_pools_are_disjoint_and_keep_a_scene_on_one_side(pool):
    train, holdout = images.list_images("photos"), images.list_images("photos_holdout")
    assert train and holdout and not set(train) & set(holdout)
    assert len(train) + len(holdout) == 25
    both = {pool / "pa/s0.png", pool / "pa/s0_big.png"}
    assert both <= set(train) or both <= set(holdout)
    assert images.list_images("photos") == train  # the same order every time (crop pools depend on it)
    image = images.load_image(train[0])
    assert image.shape == (3, 36, 40)


def test_a_folder_path_is_still_a_folder(pool, tmp_path):
    mine = tmp_path / "mine"
    _image(mine / "a.png", 40, 36)
    assert images.list_images(str(mine)) == [mine / "a.png"]


def test_a_local_folder_named_photos_is_refused_as_ambiguous(pool, tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(GankdError, match=r"\./photos"):
        images.list_images("photos")


# ----------------------------------------------------------------------------------------------- errors


def test_missing_cache_is_one_line_naming_make_photos(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GANKD_PHOTOS", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GankdError, match="make photos"):
        images.list_images("photos")
    assert photos.main(["--show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "make photos" in err and err.count("\n") == 1


def test_incomplete_or_foreign_pools_are_one_line_errors(pool):
    (pool / "pb/s3.png").unlink()
    with pytest.raises(GankdError, match="incomplete"):
        images.list_images("photos") + images.list_images("photos_holdout")
    (pool / photos.MANIFEST).write_text('{"photos": []}')
    with pytest.raises(GankdError, match="not a gankd photo manifest"):
        images.list_images("photos")


def test_fetch_refuses_to_replace_a_folder_that_is_not_a_pool(tmp_path):
    _image(tmp_path / "own" / "holiday.jpg", 40, 36)
    with pytest.raises(GankdError, match="not a gankd photo pool"):
        photos.fetch_photos(tmp_path / "own", debs=tmp_path)
    assert (tmp_path / "own" / "holiday.jpg").is_file()


def test_run_trains_on_photos_and_selects_on_photos_holdout(pool, tmp_path):
    """The pool as a recipe's train_images / val_images, through a real (tiny) run; and the missing cache there."""
    import torch

    from gankd.distill import ModelConfig, save_model
    from gankd.distill.train.recipe import recipe_from_dict
    from gankd.distill.train.loop import run

    config = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                         task="sr", scale=4)
    torch.manual_seed(0)
    save_model(tmp_path / "teacher", config.build(), config)
    recipe = {"name": "p", "teacher": str(tmp_path / "teacher"), "out_dir": str(tmp_path / "runs"), "width": 0.5,
              "teacher_d_feat": 8, "n1": 1, "n2": 1, "n3": 0, "steps_per_epoch": 1, "batch_size": 2, "hr_size": 32,
              "train_crops": 4, "val_crops_per_image": 1, "select_by": "psnr", "log_every": 1, "threads": 1,
              "train_images": "photos", "val_images": "photos_holdout"}
    run_dir = run(recipe_from_dict(recipe), log=lambda msg: None)
    assert (run_dir / "student" / "config.json").is_file()
    shutil.rmtree(pool)
    with pytest.raises(GankdError, match="make photos"):
        run(recipe_from_dict({**recipe, "out_dir": str(tmp_path / "runs2")}), log=lambda msg: None)


# ----------------------------------------------------------------------------------------------- licences


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: x

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: nature/Aqua.jpg
       nature/Aqua_1600x1400.jpg
Copyright: 2008, Charles Barbin <barbinch@free.fr>´
           2008, "nick"
License: CC-BY-SA-4.0

Files: 16.04/seeding_by_X.jpg
Copyright: X, 2018
License: CC0-1.0

Files: nature/NoDerivs.jpg
Copyright: Y
License: CC-BY-NC-ND-4.0

Files: debian/*
Copyright: 2020 Packager
License: GPL-2+
 This package is free software; you can redistribute it.
"""


def test_copyright_stanzas_match_installed_paths_last_one_wins():
    stanzas = photos.parse_copyright(COPYRIGHT)
    assert [s.licence for s in stanzas] == ["GPL-2+", "CC-BY-SA-4.0", "CC0-1.0", "CC-BY-NC-ND-4.0", "GPL-2+"]
    aqua = photos.licence_of(stanzas, "usr/share/backgrounds/mate/nature/Aqua.jpg")
    assert aqua.licence == "CC-BY-SA-4.0" and aqua.copyright == '2008, Charles Barbin; 2008, "nick"'
    # the source folder 16.04/ is not installed: a pattern without wildcards also matches by file name
    assert photos.licence_of(stanzas, "usr/share/backgrounds/seeding_by_X.jpg").licence == "CC0-1.0"
    # debian/* matches no installed image, so Files: * stays
    assert photos.licence_of(stanzas, "usr/share/backgrounds/other.png").copyright == "2014 Someone"
    assert photos.licence_of(photos.parse_copyright("not a DEP-5 file\n\nat all"), "a/b.jpg") is None


@pytest.mark.parametrize("licence, allowed", [
    ("GPL-2+", True), ("LGPLv3", True), ("CC-BY-4.0", True), ("CC-BY-SA-3.0", True), ("CC0-1.0", True),
    ("CC-BY-NC-4.0", False), ("CC-BY-ND-3.0", False), ("CC-BY-NC-SA-4.0", False), ("proprietary", False),
    ("", False)])
def test_licence_allowed(licence, allowed):
    assert photos.licence_allowed(licence) is allowed


# ----------------------------------------------------------------------------------------------- selection


def _plasma_tree(root: Path) -> None:
    walls = root / "usr/share/wallpapers"
    images = walls / "Lake/contents/images"
    _image(images / "1280x1024.png", 1280, 1024)
    _image(images / "1100x1030.png", 1100, 1030)
    (images / "640x480.png").symlink_to("1280x1024.png")
    _image(walls / "Lake/contents/images_dark/1300x1100.png", 1300, 1100)
    _image(walls / "Lake/contents/screenshot.png", 1400, 1200)
    (walls / "Lake/metadata.json").write_text(json.dumps(
        {"KPlugin": {"License": "LGPLv3", "Authors": [{"Name": "A. Photographer", "Email": "a@b.c"}]}}))
    _image(walls / "Render/contents/images/1280x1024.png", 1280, 1024)
    _image(walls / "Small/contents/images/1280x800.png", 1280, 800)
    (walls / "Small/metadata.json").write_text(json.dumps({"KPlugin": {"License": "CC-BY-SA-4.0"}}))


def test_select_keeps_listed_photos_largest_file_per_scene(tmp_path):
    _plasma_tree(tmp_path)
    source = photos.Source("plasma-test", "usr/share/wallpapers", ("Lake", "Small"))
    kept, skipped = photos.select(tmp_path, source, photos.parse_copyright(COPYRIGHT))
    assert [(k["scene"], k["width"], k["height"], k["licence"], k["author"]) for k in kept] == [
        ("plasma-test/Lake", 1280, 1024, "LGPLv3", "A. Photographer")]
    assert kept[0]["path"] == "/usr/share/wallpapers/Lake/contents/images/1280x1024.png"
    why = {Path(s["path"]).parts[4]: s["why"] for s in skipped}
    assert why == {"Render": "not a listed photo", "Small": "1280x800, short side under 1024"}


def test_select_strips_resolution_suffixes_and_reads_the_copyright(tmp_path):
    nature = tmp_path / "usr/share/backgrounds/mate/nature"
    _image(nature / "Aqua.jpg", 1200, 1100)
    _image(nature / "Aqua_1600x1400.jpg", 1600, 1400)
    _image(nature / "NoDerivs.jpg", 1200, 1100)
    source = photos.Source("mate-test", "usr/share/backgrounds/mate", ("Aqua", "NoDerivs"))
    kept, skipped = photos.select(tmp_path, source, photos.parse_copyright(COPYRIGHT))
    assert [(k["scene"], k["width"], k["licence"]) for k in kept] == [("mate-test/Aqua", 1600, "CC-BY-SA-4.0")]
    assert skipped == [{"package": "mate-test", "path": "/usr/share/backgrounds/mate/nature/NoDerivs.jpg",
                        "why": "licence CC-BY-NC-ND-4.0 not allowed"}]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian/Ubuntu) builds the test .deb")
def test_fetch_from_deb_files_writes_the_pool_and_replaces_it(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    _plasma_tree(root)
    (root / "usr/share/doc/plasma-test").mkdir(parents=True)
    (root / "usr/share/doc/plasma-test/copyright").write_text(COPYRIGHT)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text("Package: plasma-test\nVersion: 1.0-1\nArchitecture: all\n"
                                         "Maintainer: t <t@t>\nDescription: test\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(root),
                    str(debs / "plasma-test_1.0-1_all.deb")], check=True, capture_output=True)
    source = photos.Source("plasma-test", "usr/share/wallpapers", ("Lake", "Small"))
    lines = []
    files = photos.fetch_photos(tmp_path / "cache", debs=debs, sources=(source,), log=lines.append)
    assert files == [tmp_path / "cache/plasma-test/Lake.png"]
    manifest = json.loads((tmp_path / "cache" / photos.MANIFEST).read_text())
    assert manifest["packages"]["plasma-test"]["version"] == "1.0-1"
    assert (tmp_path / "cache/plasma-test/copyright").read_text() == COPYRIGHT
    assert manifest["photos"][0]["licence"] == "LGPLv3" and len(manifest["photos"][0]["sha256"]) == 64
    assert "1 photos, 1 scenes" in lines[-1]
    # a second fetch replaces the pool and leaves no staging folder behind
    photos.fetch_photos(tmp_path / "cache", debs=debs, sources=(source,), log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "debs", "pkg"]


def test_missing_package_lists_are_explained(tmp_path, monkeypatch):
    """apt-get as it answers without package lists (checked: `-o Dir::State::Lists=EMPTY download ...`)."""
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "E: Unable to locate package $2" >&2\nexit 100\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    lines = []
    with pytest.raises(GankdError, match="no photo could be fetched"):
        photos.fetch_photos(tmp_path / "cache", log=lines.append)
    assert len(lines) == len(photos.SOURCES) and all("sudo apt-get update" in line for line in lines)
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not os.environ.get("GANKD_TEST_FETCH"), reason="downloads ~170 MB: set GANKD_TEST_FETCH=1")
def test_real_fetch_from_the_debian_mirror(tmp_path):
    try:
        files = photos.fetch_photos(tmp_path / "photos", log=lambda line: None)
    except GankdError as exc:
        pytest.skip(f"the Debian packages could not be fetched here: {exc}")
    assert len(files) >= 30
    train, holdout = photos.split_scenes(photos.read_manifest(tmp_path / "photos"))
    assert len(holdout) / (len(train) + len(holdout)) == pytest.approx(0.16, abs=0.04)
