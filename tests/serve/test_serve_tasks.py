"""gankd.serve for the generate and face_sr tasks on tiny exported models: Session.generate (seeded z, psi),
restore_face (the GCFSR low-quality input, mirrored in numpy), wrong-task errors, and the demo's Generation and
Face SR tabs, live through gradio_client. (Tests may import distill/export to make artifacts; serve never does.)"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from gankd.distill import load_model
from gankd.distill.data.faces import astronaut_face, gcfsr_lq
from gankd.serve import ServeError, Session
from gankd.serve import faces as serve_faces
from gankd.serve.app import build_app
from gankd.serve.ports import free_port

TIMEOUT_S = 120

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifacts(shared_artifacts, tmp_path_factory):
    """gen_teacher (with --psi) and gen_student (without) of the same style_dim; face teacher and student: the
    shared ones, copied to folders of these names (the demo shows folder names)."""
    return shared_artifacts.copies(tmp_path_factory.mktemp("serve_tasks"), {
        "gen_teacher": "generate", "gen_student": "generate_plain", "face_teacher": "face_sr",
        "face_student": "face_sr_plain"})


def _face(size: int = 100) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()[10:210, 125:325]).resize((size, size)))


# ----------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_generate_same_seed_same_image(artifacts, backend):
    session = Session(artifacts["gen_teacher"][1], backend=backend)
    assert session.task == "generate" and session.has_psi and session.size == 32
    first = session.generate([3, 4, 5], psi=0.7)
    assert len(first) == 3 and all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for img in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, session.generate([3, 4, 5], psi=0.7)))
    assert np.abs(session.generate([4], psi=0.7)[0].astype(int) - first[1]).max() <= 1  # batch composition
    assert not np.array_equal(first[0], first[1])  # different seeds differ
    assert not np.array_equal(session.generate([3], psi=0.0)[0], first[0])  # psi is used


def test_generate_matches_the_torch_model_and_z_arrays(artifacts):
    model_dir, art = artifacts["gen_student"]
    session = Session(art, backend="ort")
    z = np.random.default_rng(7).standard_normal(32, dtype=np.float32)
    assert np.array_equal(session.generate([7])[0], session.generate(z)[0])  # the documented seeding
    with torch.no_grad():
        ref = load_model(model_dir)(torch.from_numpy(z[None]))[0].numpy().transpose(1, 2, 0)
    expected = np.rint(np.clip((ref + 1) / 2, 0, 1) * 255)
    assert np.abs(session.generate(z[None])[0].astype(int) - expected).max() <= 1


def test_teacher_and_student_see_the_same_z(artifacts):
    teacher = Session(artifacts["gen_teacher"][1])
    student = Session(artifacts["gen_student"][1])
    with_psi_1 = teacher.generate([11], psi=1.0)[0]
    assert np.array_equal(with_psi_1, teacher.generate([11])[0])  # psi None = 1 = no truncation
    assert student.generate([11])[0].shape == with_psi_1.shape


# ----------------------------------------------------------------------------------------------- face_sr


def test_restore_face_shapes_and_the_lq_recipe(artifacts):
    model_dir, art = artifacts["face_teacher"]
    session = Session(art, backend="ort")
    assert session.task == "face_sr" and session.size == 64
    face = _face(100)
    for scale in (4, 16, 64):
        out = session.restore_face(face, scale)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert session.restore_face(Image.fromarray(face), 8).shape == (64, 64, 3)
    # the LQ input mirrors gankd.distill.data.faces.gcfsr_lq (float64 numpy vs float32 torch: one 8-bit step at most)
    hr = astronaut_face(64)
    ours = serve_faces.gcfsr_lq(hr.permute(1, 2, 0).numpy().astype(np.float64), 16)
    theirs = ((gcfsr_lq(hr[None] * 2 - 1, 16)[0] + 1) / 2).permute(1, 2, 0).numpy()
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1e-6
    # restore_face = restore_face_lq of face_lq, and both equal the torch model on that input
    lq = session.face_lq(face, 16)
    restored = session.restore_face(face, 16)
    assert np.array_equal(restored, session.restore_face_lq(lq, 16))
    x = torch.from_numpy(lq.astype(np.float32).transpose(2, 0, 1)[None] / 255 * 2 - 1)
    with torch.no_grad():
        ref = load_model(model_dir)(x, torch.tensor([16.0]))[0].numpy().transpose(1, 2, 0)
    assert np.abs(restored.astype(int) - np.rint(np.clip((ref + 1) / 2, 0, 1) * 255)).max() <= 1


def test_wrong_task_and_bad_values_are_one_line(artifacts):
    gen = Session(artifacts["gen_student"][1])
    face = Session(artifacts["face_teacher"][1])
    cases = [
        (lambda: gen.run(np.zeros((8, 8, 3), np.uint8)), "Session.run is for sr artifacts"),
        (lambda: gen.restore_face(_face(), 8), "use Session.generate"),
        (lambda: face.generate([1]), "use Session.restore_face"),
        (lambda: face.run(_face()), "is a face_sr artifact"),
        (lambda: gen.generate([1], psi=0.5), "re-export it with gankd-export --psi"),
        (lambda: gen.generate([-1]), "seeds must be integers >= 0"),
        (lambda: gen.generate([]), "non-empty list"),
        (lambda: gen.generate(np.zeros((2, 5), np.float32)), "N x 32"),
        (lambda: Session(artifacts["gen_teacher"][1]).generate([1], psi=1.5), "psi must be a number in [0, 1]"),
        (lambda: face.restore_face(_face(), 2), "scale must be a number in [4, 64]"),
        (lambda: face.restore_face("face.png", 8), "numpy array or a PIL image"),
        # the size limits of every front end (images.check_size), on each face entry
        (lambda: face.restore_face(np.zeros((1, 1, 3), np.uint8), 8), "the image is 1x1 px; it needs at least 8 px"),
        (lambda: face.face_lq(np.zeros((0, 20, 3), np.uint8), 8), "the image is 20x0 px; it needs at least 8 px"),
        (lambda: face.restore_face_lq(Image.new("RGB", (7, 30)), 8), "the image is 7x30 px; it needs at least 8"),
        (lambda: Session(artifacts["face_teacher"][1], max_pixels=50 * 50).restore_face(_face(60), 8),
         "the image is 60x60 px = 3600 pixels, over the limit of 2500"),
    ]
    for call, words in cases:
        with pytest.raises(ServeError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_upscale_cli_refuses_other_tasks(artifacts, tmp_path, capsys):
    from gankd.serve.cli import main as demo_main

    (tmp_path / "in").mkdir()
    Image.fromarray(_face(20)).save(tmp_path / "in" / "a.png")
    assert demo_main(["upscale", str(artifacts["gen_student"][1]), str(tmp_path / "in"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "upscale runs sr artifacts" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- demo


def _blocks(demo, kind):
    return [b for b in demo.blocks.values() if isinstance(b, kind)]


def test_tabs_follow_the_tasks(artifacts):
    import gradio as gr

    dirs = [artifacts[name][1] for name in ("gen_teacher", "gen_student", "face_teacher", "face_student")]
    demo = build_app(dirs)
    labels = {tab.label for tab in _blocks(demo, gr.Tab)}
    assert labels == {"Generation", "Face SR"}  # no SR tab without SR artifacts
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"gen-seed", "gen-run", "gen-teacher", "gen-student", "face-input", "face-scale", "face-run",
            "face-teacher", "face-student"} <= ids
    assert "run-button" not in ids and "input-image" not in ids
    psi = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "gen-psi")
    assert psi.visible  # the teacher has a psi input
    only_plain = build_app([artifacts["gen_student"][1]])
    assert {tab.label for tab in _blocks(only_plain, gr.Tab)} == {"Generation"}
    assert not next(b for b in only_plain.blocks.values() if getattr(b, "elem_id", None) == "gen-psi").visible


def test_live_generation_and_face_endpoints(artifacts, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    dirs = [artifacts[name][1] for name in ("gen_teacher", "gen_student", "face_teacher", "face_student")]
    demo = build_app(dirs)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
        teacher, student, report = client.submit("gen_teacher", "gen_student", "ort", 5, 3, 0.5,
                                                 api_name="/generate").result(timeout=TIMEOUT_S)
        grid = np.asarray(Image.open(teacher))
        assert grid.shape == (32, 3 * 32 + 2 * 2, 3)  # 3 images in a row, 2 px apart
        expected = Session(artifacts["gen_teacher"][1], backend="ort").generate([5, 6, 7], psi=0.5)
        assert np.array_equal(grid[:, :32], expected[0]) and np.array_equal(grid[:, 68:], expected[2])
        assert np.asarray(Image.open(student)).shape == grid.shape
        assert "psi 0.5" in report and "no psi input" in report and report.count(" ms for ") == 2

        path = tmp_path / "face.png"
        Image.fromarray(_face(120)).save(path)
        lq, out_teacher, out_student, face_report = client.submit(
            gradio_client.handle_file(str(path)), "face_teacher", "face_student", "auto", 16,
            api_name="/restore_face").result(timeout=TIMEOUT_S)
        session = Session(artifacts["face_teacher"][1])
        assert np.array_equal(np.asarray(Image.open(lq)), session.face_lq(_face(120), 16))
        assert np.array_equal(np.asarray(Image.open(out_teacher)), session.restore_face(_face(120), 16))
        assert np.asarray(Image.open(out_student)).shape == (64, 64, 3)
        assert "x16" in face_report and "PSNR to teacher" in face_report
    finally:
        demo.close()
