"""A training pool of real photos, fetched once from Debian's wallpaper packages into a cache outside the repo.

``make photos`` (= ``python -m gankd.distill.data.photos``) downloads four Debian packages with ``apt-get download`` (no
root needed; it runs in a temporary folder), unpacks them with ``dpkg-deb -x`` and keeps their photos in
``~/.cache/gankd/photos`` (``$GANKD_PHOTOS``, or ``--dest``), with ``manifest.json``: each photo's package, version,
path inside the package, licence and author. Recipes then name the pool: ``train_images: photos`` (its train
scenes) and ``val_images: photos_holdout`` (its held-out scenes, for selection and early stopping).

What is kept, and why:

- **Only photos, by an explicit list of scenes** (``SOURCES``), chosen by looking at every picture of the Debian 12
  (bookworm) packages. The packages mix photos with renders, paintings and vector art; a heuristic cannot tell
  a smooth dusk photo (``summer_1am``) from a smooth gradient render (``Kay``), a list can. A scene a later package
  version adds is skipped (and listed under ``skipped``) until someone looks at it.
- **JPEG or PNG, at least 1024 px on the short side**: every listed scene passes; the rule keeps thumbnails and
  phone-portrait variants out if a package version ships only those.
- **One file per scene, the largest**: a scene shipped in several resolutions (Plasma's ``contents/images/``,
  ``NAME_3840x2160.jpg``) is one scene, so no two resolutions of it can land in train and held-out.
- **Licences that allow this use** (``licence_allowed``): GPL, LGPL, CC-BY, CC-BY-SA, CC0. Read per file: from
  the package's ``usr/share/doc/<pkg>/copyright`` (machine-readable DEP-5, the last matching ``Files:`` stanza
  wins), or from Plasma's per-wallpaper ``metadata.json``, which names each wallpaper's own licence and author
  (Debian's copyright file there says GPL-2+ for the whole package). A file whose licence is missing or not
  allowed is skipped.

Left out after a look: ``gnome-backgrounds`` 43 (SVG/WebP renders), ``ukui-wallpapers`` (illustrations), and the
renders and paintings of the four packages below. The photos stay in the cache: gankd never ships them; each
package's copyright file is copied next to its photos.

Held-out split (``split_scenes``): per package, the scenes sorted by the SHA-256 of their name, the first
``HOLDOUT_FRACTION`` of them (rounded) held out. Deterministic, independent of the cache folder and of the other
packages, and by scene.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gankd.distill.errors import GankdError
from gankd.serve.errors import first_line
from gankd.serve.files import publish_folder

POOLS = ("photos", "photos_holdout")  # train_images / val_images names: the pool's train and held-out scenes
HOLDOUT_FRACTION = 0.18
MIN_SHORT_SIDE = 1024
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MANIFEST = "manifest.json"
FORMAT = "gankd-photos/1"
_ALLOWED_LICENCES = ("CC0", "CC-BY", "GPL", "LGPL", "PUBLIC-DOMAIN")
_RESOLUTION_SUFFIX = re.compile(r"_\d+x\d+$")


@dataclass(frozen=True)
class Source:
    """One Debian package: where its wallpapers are once unpacked, and which of them are photos."""

    package: str
    folder: str
    scenes: tuple[str, ...]


SOURCES = (
    # KDE Plasma 5.27: 30 wallpapers, 11 of them photos (the rest low-poly renders, a painting, a cartoon); LGPL-3
    Source("plasma-workspace-wallpapers", "usr/share/wallpapers",
           ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
            "OneStandsOut", "Path", "summer_1am")),
    # MATE 1.26: the 12 of nature/ are photos (abstract/ and desktop/ are art); GPL-2+
    Source("mate-backgrounds", "usr/share/backgrounds/mate",
           ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
            "TwoWings", "Wood", "YellowFlower")),
    # Ubuntu Touch 16.04 wallpapers: 13 of 15 are photos (not analogpattern, a tinted texture; not umang, a
    # render); CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0
    Source("lomiri-wallpapers-16.04", "usr/share/backgrounds",
           ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
    # Ubuntu Touch 20.04 wallpapers: one photo of four (a nuthatch); CC-BY-SA-3.0
    Source("lomiri-wallpapers-20.04", "usr/share/backgrounds", ("Kleiber_by_Lukas_Baubkus",)),
)


# ----------------------------------------------------------------------------------------------- the pool


def photos_dir(dest: str | Path | None = None) -> Path:
    """The cache folder: ``dest``, else ``$GANKD_PHOTOS``, else ``$XDG_CACHE_HOME/gankd/photos`` (~/.cache)."""
    if dest is not None:
        return Path(dest).expanduser()
    if os.environ.get("GANKD_PHOTOS"):
        return Path(os.environ["GANKD_PHOTOS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "gankd" / "photos"


def pool_images(name: str, dest: str | Path | None = None) -> list[Path]:
    """The files of a named pool (``photos``: train scenes, ``photos_holdout``: held-out scenes), sorted."""
    if name not in POOLS:
        raise GankdError(f"unknown photo pool {name!r}; expected one of {', '.join(POOLS)}")
    folder = photos_dir(dest)
    if Path(name).is_dir() and Path(name).resolve() != folder.resolve():
        raise GankdError(f"{name!r} names the fetched photo pool, but ./{name} is also a folder here: write "
                         f"./{name} for the folder, or run from elsewhere for the pool")
    photos = read_manifest(folder, name)
    train, holdout = split_scenes(photos)
    chosen = holdout if name == "photos_holdout" else train
    files = sorted(folder / p["file"] for p in photos if p["scene"] in chosen)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise GankdError(f"the photo pool in {str(folder)!r} is incomplete ({len(missing)} of its files are "
                         f"missing, e.g. {missing[0].name}): run `make photos` again")
    return files


def read_manifest(folder: Path, name: str = "photos") -> list[dict]:
    """The photo records of a fetched pool; one line naming `make photos` when there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        raise GankdError(f"`{name}` is the photo pool fetched from Debian packages, and {str(folder)!r} holds none "
                         "yet: run `make photos` once (or set GANKD_PHOTOS to where you fetched it)")
    try:
        manifest = json.loads(path.read_text())
        photos = manifest["photos"]
        valid = manifest["format"] == FORMAT and all({"file", "scene", "package"} <= set(p) for p in photos)
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise GankdError(f"{str(path)!r} is not a gankd photo manifest ({FORMAT}): run `make photos` again")
    if not photos:
        raise GankdError(f"the photo pool in {str(folder)!r} is empty: run `make photos` again")
    return photos


def split_scenes(photos: list[dict], fraction: float = HOLDOUT_FRACTION) -> tuple[set[str], set[str]]:
    """(train scenes, held-out scenes): per package, the scenes in SHA-256 order of their name, the first
    ``round(fraction * n)`` held out. By scene, so a scene in several files is on one side only; per package, so
    both sides hold every source's kind of picture."""
    by_package: dict[str, set[str]] = {}
    for photo in photos:
        by_package.setdefault(photo["package"], set()).add(photo["scene"])
    train, holdout = set(), set()
    for scenes in by_package.values():
        ordered = sorted(scenes, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        cut = round(fraction * len(ordered))
        holdout.update(ordered[:cut])
        train.update(ordered[cut:])
    return train, holdout


# ----------------------------------------------------------------------------------------------- licences


@dataclass(frozen=True)
class Stanza:
    files: tuple[str, ...]
    copyright: str
    licence: str


def parse_copyright(text: str) -> list[Stanza]:
    """The ``Files:`` stanzas of a machine-readable Debian copyright file (DEP-5), in file order."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            licence = fields["license"].splitlines()[0].strip() if fields["license"] else ""
            stanzas.append(Stanza(tuple(fields["files"].split()), _clean_author(fields.get("copyright", "")),
                                  licence))
    return stanzas


def licence_of(stanzas: list[Stanza], relpath: str) -> Stanza | None:
    """The stanza of an installed file: the last one whose pattern matches (DEP-5). Patterns name source paths
    (``nature/Aqua.jpg``, ``16.04/x.jpg``); installed paths add a prefix (``usr/share/backgrounds/mate/``) or drop
    a folder, so a pattern also matches as a path suffix, and a pattern without wildcards by its file name."""
    name = relpath.rsplit("/", 1)[-1]
    found = None
    for stanza in stanzas:
        for pattern in stanza.files:
            base = pattern.rsplit("/", 1)[-1]
            if (fnmatch.fnmatchcase(relpath, pattern) or fnmatch.fnmatchcase(relpath, "*/" + pattern)
                    or (not any(c in base for c in "*?[") and base == name)):
                found = stanza
    return found


def licence_allowed(licence: str) -> bool:
    """GPL, LGPL, CC-BY, CC-BY-SA, CC0, public domain; never NC (non-commercial) or ND (no derivatives)."""
    name = licence.upper().replace(" ", "-")
    if re.search(r"(^|-)(NC|ND)(-|$)", name):
        return False
    return name.startswith(_ALLOWED_LICENCES)


def _clean_author(text: str) -> str:
    """Copyright lines without e-mail addresses or stray marks, joined by '; '."""
    lines = [re.sub(r"\s*<[^>]*>", "", line).strip(" ´") for line in text.splitlines()]
    return "; ".join(line for line in lines if line)


def _plasma_metadata(scene_dir: Path) -> tuple[str, str] | None:
    """(licence, author) of a Plasma wallpaper from its own metadata.json."""
    try:
        plugin = json.loads((scene_dir / "metadata.json").read_text())["KPlugin"]
        authors = "; ".join(a["Name"] for a in plugin.get("Authors", []) if a.get("Name"))
        return plugin["License"], authors
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------- candidates


def scene_files(root: Path, source: Source) -> dict[str, list[Path]]:
    """Every JPEG/PNG of a package's wallpaper folder, by scene: a Plasma wallpaper's folder name (its
    ``contents/images/``, not the dark variant or the screenshot), else the file name without a ``_WxH`` suffix.
    Links are left out (Plasma links one file under several resolution names)."""
    scenes: dict[str, list[Path]] = {}
    base = root / source.folder
    if not base.is_dir():
        return scenes
    for path in sorted(base.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        parts = path.relative_to(base).parts
        if "contents" in parts:
            if parts[-2] != "images":
                continue
            scene = parts[parts.index("contents") - 1]
        else:
            scene = _RESOLUTION_SUFFIX.sub("", path.stem)
        scenes.setdefault(scene, []).append(path)
    return scenes


def _size(path: Path) -> tuple[int, int, str]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size[0], img.size[1], img.format or "?"


def select(root: Path, source: Source, stanzas: list[Stanza]) -> tuple[list[dict], list[dict]]:
    """(kept, skipped) records of one unpacked package, following the rules of the module docstring."""
    kept, skipped = [], []

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    for scene, paths in scene_files(root, source).items():
        if scene not in source.scenes:
            skipped.append({"package": source.package, "path": "/" + rel(paths[0]), "why": "not a listed photo"})
            continue
        sizes = {p: _size(p) for p in paths}
        path = max(paths, key=lambda p: sizes[p][0] * sizes[p][1])
        width, height, fmt = sizes[path]
        meta = _plasma_metadata(path.parents[2]) if "contents" in path.parts else None
        stanza = licence_of(stanzas, rel(path))
        licence, author = meta if meta else (stanza.licence, stanza.copyright) if stanza else ("", "")
        why = _reason_to_skip(licence, width, height, fmt)
        if why:
            skipped.append({"package": source.package, "path": "/" + rel(path), "why": why})
            continue
        kept.append({"scene": f"{source.package}/{scene}", "package": source.package, "path": "/" + rel(path),
                     "source": path, "licence": licence, "author": author, "width": width, "height": height,
                     "licence_from": "metadata.json" if meta else "copyright"})
    return kept, skipped


def _reason_to_skip(licence: str, width: int, height: int, fmt: str) -> str | None:
    if not licence:
        return "no licence found"
    if not licence_allowed(licence):
        return f"licence {licence} not allowed"
    if fmt not in ("JPEG", "PNG"):
        return f"{fmt}, not JPEG/PNG"
    if min(width, height) < MIN_SHORT_SIDE:
        return f"{width}x{height}, short side under {MIN_SHORT_SIDE}"
    return None


# ----------------------------------------------------------------------------------------------- fetch


def fetch_photos(dest: str | Path | None = None, debs: str | Path | None = None,
                 sources: tuple[Source, ...] = SOURCES, log=print) -> list[Path]:
    """Download (or take from ``debs``, a folder of ``.deb`` files), unpack and select the photos; write them and
    ``manifest.json`` to the cache folder (``photos_dir``), replacing an earlier pool there. Returns the files."""
    folder = photos_dir(dest)
    _check_replaceable(folder)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gankd-photos-") as tmp:
        work = Path(tmp)
        records, skipped, packages, copyrights = [], [], {}, {}
        for source in sources:
            deb = _deb_file(source.package, work, debs, log)
            if deb is None:
                continue
            root = work / source.package
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb could not unpack {deb.name}")
            version = _run(["dpkg-deb", "-f", str(deb), "Version"], f"dpkg-deb could not read {deb.name}").strip()
            copyright_file = root / "usr/share/doc" / source.package / "copyright"
            stanzas = parse_copyright(copyright_file.read_text(errors="replace")) if copyright_file.is_file() else []
            kept, left = select(root, source, stanzas)
            for record in kept:
                record["version"] = version
            records += kept
            skipped += left
            log(f"{source.package} {version}: {len(kept)} photo(s) kept, {len(left)} other image(s) left out")
            has_copyright = copyright_file.is_file()
            packages[source.package] = {"version": version, "photos": len(kept),
                                        "copyright": f"{source.package}/copyright" if has_copyright else None}
            if has_copyright:
                copyrights[source.package] = copyright_file
        if not records:
            raise GankdError("no photo could be fetched: see the lines above (apt-get needs the Debian package "
                             "lists; or pass --debs DIR with the .deb files)")
        files = _write_pool(folder, records, skipped, packages, copyrights)
    log(summary(folder, time.perf_counter() - started))
    return files


def _deb_file(package: str, work: Path, debs: str | Path | None, log) -> Path | None:
    """The package's .deb: from ``debs`` if given, else downloaded by ``apt-get download`` into ``work``."""
    if debs is not None:
        found = sorted(Path(debs).glob(f"{package}_*.deb"))
        if not found:
            log(f"skipped {package}: no {package}_*.deb in {str(debs)!r}")
        return found[-1] if found else None
    try:
        done = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True,
                              timeout=600)
    except FileNotFoundError:
        raise GankdError("apt-get is not installed: `make photos` needs a Debian or Ubuntu machine, or the .deb "
                         "files in a folder (--debs DIR)") from None
    except subprocess.TimeoutExpired:
        raise GankdError(f"apt-get download {package} took over 10 minutes: is the mirror reachable?") from None
    found = sorted(work.glob(f"{package}_*.deb"))
    if done.returncode or not found:
        errors = [line for line in done.stderr.splitlines() if line.startswith("E:")] or [first_line(done.stderr)]
        if any("locate package" in e or "candidate" in e for e in errors):
            log(f"skipped {package}: apt-get does not know it; the package lists are missing or stale (run `sudo "
                f"apt-get update` once: it needs root), or this release has no {package}")
        else:
            log(f"skipped {package}: apt-get download failed ({errors[0]})")
        return None
    return found[-1]


def _run(command: list[str], what: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise GankdError(f"{command[0]} is not installed: `make photos` needs dpkg (Debian or Ubuntu)") from None
    if done.returncode:
        raise GankdError(f"{what} ({first_line(done.stderr)})")
    return done.stdout


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace a folder that is not an earlier pool (GANKD_PHOTOS pointed at someone's own photos)."""
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).is_file())):
        raise GankdError(f"{str(folder)!r} exists and is not a gankd photo pool (no {MANIFEST}): choose another "
                         "folder (--dest or GANKD_PHOTOS)")


def _write_pool(folder: Path, records: list[dict], skipped: list[dict], packages: dict,
                copyrights: dict[str, Path]) -> list[Path]:
    """Copy the photos into a fresh folder beside ``folder``, manifest last, then swap it in: an interrupted
    fetch leaves the earlier pool as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for package in packages:
            (stage / package).mkdir()
            if package in copyrights:
                shutil.copyfile(copyrights[package], stage / package / "copyright")
        for record in records:
            src = record.pop("source")
            record["file"] = f"{record['package']}/{record['scene'].split('/', 1)[1]}{src.suffix.lower()}"
            shutil.copyfile(src, stage / record["file"])
            record["sha256"] = hashlib.sha256((stage / record["file"]).read_bytes()).hexdigest()
        manifest = {"format": FORMAT, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rule": "listed photo scenes (gankd.distill.data.photos.SOURCES), JPEG/PNG, short side >= "
                            f"{MIN_SHORT_SIDE} px, the largest file of each scene, licence GPL/LGPL/CC-BY(-SA)/CC0",
                    "holdout_fraction": HOLDOUT_FRACTION, "packages": packages,
                    "photos": sorted(records, key=lambda r: r["scene"]), "skipped": skipped}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        publish_folder(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return sorted(folder / r["file"] for r in records)


def summary(folder: str | Path | None = None, seconds: float | None = None) -> str:
    """What a fetched pool holds: photos, scenes, megapixels, licences, the split; one paragraph."""
    folder = photos_dir(folder)
    photos = read_manifest(folder)
    train, holdout = split_scenes(photos)
    mpx = sum(p.get("width", 0) * p.get("height", 0) for p in photos) / 1e6
    licences = ", ".join(f"{name} {n}" for name, n in Counter(p.get("licence", "?") for p in photos).most_common())
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return (f"photo pool{took}: {len(photos)} photos, {len({p['scene'] for p in photos})} scenes, {mpx:.1f} Mpx, in "
            f"{folder}\n  licences: {licences}\n  split: train_images: photos = {len(train)} scenes, val_images: "
            f"photos_holdout = {len(holdout)} scenes ({', '.join(sorted(holdout))})")


# ----------------------------------------------------------------------------------------------- CLI


def _command():
    import click

    @click.command(help="Fetch the photo pool (train_images: photos, val_images: photos_holdout) from Debian's "
                        "wallpaper packages into a cache folder outside the repo.")
    @click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Cache folder (default: $GANKD_PHOTOS, else ~/.cache/gankd/photos).")
    @click.option("--debs", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                  help="A folder of already downloaded .deb files, instead of apt-get download.")
    @click.option("--show", is_flag=True, help="Print what the cache holds, fetch nothing.")
    def photos(dest: Path | None, debs: Path | None, show: bool) -> None:
        if show:
            click.echo(summary(dest))
        else:
            fetch_photos(dest, debs, log=click.echo)

    return photos


def main(argv: list[str] | None = None) -> int:
    from gankd.serve.errors import run_cli

    return run_cli(lambda: _command().main(args=argv, prog_name="python -m gankd.distill.data.photos",
                                           standalone_mode=False) and None, (GankdError,))


if __name__ == "__main__":
    sys.exit(main())
