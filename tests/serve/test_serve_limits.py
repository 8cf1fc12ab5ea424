"""One set of size limits for every way into gankd.serve, and ``gankd-demo upscale`` that never overwrites its own
outputs (issue: cases 7 and 8 of the serve audit; the demo's and Triton's live cases are in test_serve_security.py
and test_triton.py, on their servers).

- Limits: ``images.check_size`` is the one check; ``Session.run`` (numpy and PIL), ``run_array``, ``forward``, the
  reader and ``upscale`` give its line, word for word, for a 1x1 image, an empty side (H = 0, W = 0), 7 px and one
  pixel over the maximum; never ONNX Runtime's text.
- upscale: inputs whose stems collide (``a.png`` / ``a.jpg``, ``A.gif`` / ``a.png`` across case, a file already
  named like another's fallback) each get their own output, equal to their own Session run; writing into the input
  folder keeps every input byte for byte; a symlink in the output folder is replaced, not written through; the
  summary counts files written.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankd.serve import ServeError, Session
from gankd.serve.cli import main as demo_main
from gankd.serve.cli import output_names
from gankd.serve.images import MAX_PIXELS, MIN_SIDE_PX, check_size, read_image

MAX = 40 * 40  # the limit the tests give; MAX_PIXELS is the default of every front end

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifact(shared_artifacts):
    return shared_artifacts["sr_small"][1]  # a tiny x2 SRVGG, ONNX only


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40 + 9 * seed:40 + 9 * seed + height, 150:150 + width])


def _line(width: int, height: int, max_pixels: int = MAX) -> str:
    with pytest.raises(ServeError) as info:
        check_size(width, height, max_pixels)
    return str(info.value)


# (width, height) outside the limits: 1x1, an empty side, one pixel short, one pixel over
BAD_SIZES = [(1, 1), (16, 0), (0, 16), (7, 16), (16, 7), (41, 40)]


def test_the_one_check_and_its_lines():
    assert _line(1, 1) == f"the image is 1x1 px; it needs at least {MIN_SIDE_PX} px on each side"
    assert _line(41, 40) == f"the image is 41x40 px = 1640 pixels, over the limit of {MAX}"
    check_size(MIN_SIDE_PX, MIN_SIDE_PX, MAX)
    check_size(40, 40, MAX)
    assert MAX_PIXELS == 1024 * 1024


@pytest.mark.parametrize("width, height", BAD_SIZES)
def test_session_gives_the_same_line_on_every_entry(artifact, width, height):
    session = Session(artifact, max_pixels=MAX)
    expected = _line(width, height)
    rgb = np.full((height, width, 3), 0.5, np.float32)
    calls = {
        "run numpy": lambda: session.run((rgb * 255).astype(np.uint8)),
        "run float, tiled": lambda: session.run(rgb, tile=16),
        "run gray": lambda: session.run(np.zeros((height, width), np.uint16)),
        "run_array": lambda: session.run_array(rgb),
        "forward": lambda: session.forward(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])),
    }
    if width and height:  # PIL has no empty images
        calls["run PIL"] = lambda: session.run(Image.new("RGB", (width, height)))
    for name, call in calls.items():
        with pytest.raises(ServeError) as info:
            call()
        assert str(info.value) == expected, name


def test_session_default_limit_and_its_option(artifact):
    assert Session(artifact).max_pixels == MAX_PIXELS
    assert Session(artifact, max_pixels=MAX).run(_photo(40, 40)).shape == (80, 80, 3)  # at the limit: served
    for bad in (0, -5, 2.5, True, "1000"):
        with pytest.raises(ServeError, match="max_pixels must be a whole number >= 1"):
            Session(artifact, max_pixels=bad)


def test_the_reader_and_upscale_give_the_same_line(artifact, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for width, height in BAD_SIZES:
        if width and height:
            Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(src / f"w{width}h{height}.png")
    Image.fromarray(_photo(20, 16)).save(src / "good.png")
    for width, height in BAD_SIZES:
        if width and height:
            with pytest.raises(ServeError) as info:
                read_image(src / f"w{width}h{height}.png", MAX)
            assert str(info.value) == _line(width, height)
    assert demo_main(["upscale", str(artifact), str(src), str(out), "--max-pixels", str(MAX)]) == 1
    captured = capsys.readouterr()
    for width, height in BAD_SIZES:
        if width and height:
            assert f"skipped w{width}h{height}.png: {_line(width, height)}\n" in captured.err
    assert "upscaled 1 of 5 images" in captured.out and sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_a_folder_is_not_a_missing_file(tmp_path, artifact, capsys):
    (tmp_path / "x.pth").mkdir()
    with pytest.raises(ServeError, match="^it is a folder, not an image file$"):
        read_image(tmp_path / "x.pth")
    (tmp_path / "file").write_text("x")
    assert demo_main(["upscale", str(artifact), str(tmp_path / "file"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "input folder" in err and "is a file, not a folder" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- upscale names


def _run_upscale(artifact, src: Path, out: Path, capsys) -> tuple[int, str, str]:
    code = demo_main(["upscale", str(artifact), str(src), str(out), "--tile", "0"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expected(artifact, path: Path) -> np.ndarray:
    return Session(artifact).run(read_image(path).array)


def test_colliding_stems_each_get_their_own_output(artifact, tmp_path, capsys):
    """Case 8: a.png and a.jpg used to print "upscaled 2 of 2" and leave one a.png."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_photo(16, 20, seed=0)).save(src / "a.png")
    Image.fromarray(_photo(16, 20, seed=1)).save(src / "a.jpg", quality=95)
    code, stdout, stderr = _run_upscale(artifact, src, out, capsys)
    assert code == 0 and f"upscaled 2 of 2 images into {out}" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png"]
    assert "note a.jpg: written as a.jpg.png, not a.png" in stderr
    for name, source in (("a.png", "a.png"), ("a.jpg.png", "a.jpg")):
        assert np.array_equal(np.asarray(Image.open(out / name)), _expected(artifact, src / source)), name


def test_collisions_across_case_and_with_fallback_names(artifact, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ["a.png", "A.gif", "a.jpg", "a.jpg.png", "a.JPG", "b.tif"]
    for seed, name in enumerate(names):
        Image.fromarray(_photo(12, 12, seed=seed)).save(src / name, format="PNG")  # read by content
    code, stdout, _ = _run_upscale(artifact, src, out, capsys)
    written = sorted(p.name for p in out.iterdir())
    assert code == 0 and f"upscaled {len(names)} of {len(names)} images" in stdout
    assert len(written) == len(names) and len({n.casefold() for n in written}) == len(names)
    assert "a.png" in written and "a.jpg.png" in written and "b.png" in written
    mapping = output_names([src / n for n in names])
    for name in names:  # each output is its own input's image
        got = np.asarray(Image.open(out / mapping[src / name]))
        assert np.array_equal(got, _expected(artifact, src / name)), name


def test_writing_into_the_input_folder_keeps_every_input(artifact, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(_photo(16, 16, seed=0)).save(src / "a.png")
    Image.fromarray(_photo(16, 16, seed=1)).save(src / "a.jpg", quality=95)
    Image.fromarray(_photo(16, 16, seed=2)).save(src / "b.png")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    code, stdout, _ = _run_upscale(artifact, src, src, capsys)
    assert code == 0 and "upscaled 3 of 3 images" in stdout
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.name in before} == before
    outputs = sorted(set(p.name for p in src.iterdir()) - set(before))
    assert len(outputs) == 3 and not any(name.startswith(".") for name in outputs)
    # the same through a symlink to the folder
    link = tmp_path / "link"
    link.symlink_to(src, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert _run_upscale(artifact, src, link, capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.name in before} == before


def test_a_symlink_in_the_output_folder_is_replaced_not_written_through(artifact, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.fromarray(_photo(16, 16)).save(src / "a.png")
    keep = tmp_path / "precious.png"
    keep.write_bytes(b"saved work")
    (out / "a.png").symlink_to(keep)
    assert _run_upscale(artifact, src, out, capsys)[0] == 0
    assert keep.read_bytes() == b"saved work"
    assert not (out / "a.png").is_symlink() and Image.open(out / "a.png").size == (32, 32)


def test_the_summary_counts_the_files_written(artifact, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_photo(16, 16, seed=0)).save(src / "a.png")
    Image.fromarray(_photo(16, 16, seed=1)).save(src / "b.png")
    (out / "b.png").mkdir(parents=True)  # b's output cannot be written
    code, stdout, stderr = _run_upscale(artifact, src, out, capsys)
    assert code == 1 and f"upscaled 1 of 2 images into {out}; skipped 1" in stdout
    assert "skipped b.png: " in stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file left behind


def test_output_names_never_repeat():
    """Any mix of stems, suffixes and cases (and names taken by the folder itself): distinct outputs, ``<stem>.png``
    wherever no other input claims it."""
    rng = random.Random(0)
    parts = ["a", "A", "a.jpg", "a.png", "b", "a-2", "a.jpg-2"]
    suffixes = [".png", ".jpg", ".PNG", ".gif", ""]
    for _ in range(300):
        names = {rng.choice(parts) + rng.choice(suffixes) for _ in range(rng.randint(1, 8))}
        taken = set(rng.sample(sorted(names), rng.randint(0, len(names)))) if rng.random() < 0.3 else set()
        files = [Path("in") / name for name in sorted(names)]
        out = output_names(files, taken)
        folded = [name.casefold() for name in out.values()]
        assert len(set(folded)) == len(files), (names, out)
        assert not set(folded) & {t.casefold() for t in taken}, (names, taken, out)
        stems = [f"{p.stem}.png".casefold() for p in files]
        for path, stem in zip(files, stems):
            if stems.count(stem) == 1 and stem not in {t.casefold() for t in taken}:
                assert out[path] == f"{path.stem}.png", (names, taken, out)
    assert output_names([Path("a.jpg"), Path("a.png")]) == {Path("a.png"): "a.png", Path("a.jpg"): "a.jpg.png"}
    assert output_names([Path("x.png")], {"x.png", "x.png.png"}) == {Path("x.png"): "x.png-2.png"}
