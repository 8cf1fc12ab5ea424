"""The Gradio demo: ``build_app(artifact_dirs)`` -> ``gr.Blocks`` (``gankd-demo [ARTIFACT_DIR ...]`` launches it).

One tab per task, shown only when an artifact of that task is given (the manifest's ``task``), each comparing a
teacher and a student with their latency:

- Super-resolution (``sr``): both on the same upload; the student's PSNR to the teacher.
- Generation (``generate``): the same seeds through both (z of a seed is the same for every artifact of a
  style_dim: ``Session.generate``), shown as grids; psi (truncation) where an artifact was exported with ``--psi``.
- Face SR (``face_sr``): a clean face upload degraded by the chosen scale the GCFSR way; the low-quality input and
  both restorations.

gradio, PIL and scikit-image import inside the functions: ``import gankd.serve`` stays light.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .errors import ServeError
from .session import Session, read_manifest

DEFAULT_MAX_PIXELS = 1024 * 1024
MIN_SIDE_PX = 8  # smaller inputs (a 1x1 upload) are not photos; reflect padding wants a few pixels anyway
QUICKSTART_DIRS = (Path("exports/teacher"), Path("exports/student"))
QUICKSTART_HINT = "No model artifacts found. Make them with `make quickstart`, then run `gankd-demo`."
UI_BACKENDS = ("auto", "ort", "torch")
CONCURRENCY = 4  # requests one event runs at once; a Session is thread-safe
MAX_GENERATE = 8
DEFAULT_PSI = 0.7
FACE_SCALES = (4, 64)  # the face scale slider's range, step 4


def default_artifact_dirs(root: Path | None = None) -> list[Path]:
    """The quickstart's output (``exports/teacher``, ``exports/student``) where it exists under ``root``."""
    root = Path.cwd() if root is None else root
    return [root / d for d in QUICKSTART_DIRS if (root / d / "manifest.json").is_file()]


class SessionCache:
    """One Session per (artifact folder, backend), created on first use; safe to call from the queue's threads."""

    def __init__(self):
        self._sessions: dict[tuple[Path, str], Session] = {}
        self._lock = threading.Lock()

    def get(self, artifact_dir: Path, backend: str) -> Session:
        key = (artifact_dir, backend)
        with self._lock:  # one lock for all: loading is rare and two loads of one model would waste memory
            if key not in self._sessions:
                self._sessions[key] = Session(artifact_dir, backend=backend)
            return self._sessions[key]


def build_app(artifact_dirs: list[Path] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              default_tile: int = 256):
    """The demo over ``artifact_dirs`` (None: the quickstart's output, if any). Raises ServeError for a folder
    that is not an artifact."""
    import gradio as gr

    dirs = default_artifact_dirs() if artifact_dirs is None else [Path(d) for d in artifact_dirs]
    manifests = {d: read_manifest(d) for d in dirs}
    by_task = {task: _named({d: m for d, m in manifests.items() if _task(m) == task})
               for task in ("sr", "generate", "face_sr")}
    with gr.Blocks(title="gankd demo") as demo:
        gr.Markdown("# gankd: distilled GANs, teacher vs student")
        if not manifests:
            gr.Markdown(QUICKSTART_HINT)
        if by_task["sr"]:
            with gr.Tab("Super-resolution"):
                _super_resolution_tab(by_task["sr"], max_pixels, default_tile)
        if by_task["generate"]:
            with gr.Tab("Generation"):
                psi_names = {name for name, d in by_task["generate"].items()
                             if any(spec.get("name") == "psi" for spec in manifests[d]["inputs"])}
                _generation_tab(by_task["generate"], psi_names)
        if by_task["face_sr"]:
            with gr.Tab("Face SR"):
                _face_tab(by_task["face_sr"], max_pixels)
    demo.queue(default_concurrency_limit=CONCURRENCY)
    return demo


def _task(manifest: dict) -> str:
    return manifest.get("task") or manifest.get("config", {}).get("task", "sr")


def _named(manifests: dict[Path, dict]) -> dict[str, Path]:
    """Display name (the folder's name, made unique) -> artifact folder, in the order given."""
    names: dict[str, Path] = {}
    for path in manifests:
        name, n = path.name or str(path), 2
        while name in names:
            name, n = f"{path.name} ({n})", n + 1
        names[name] = path
    return names


def _super_resolution_tab(models: dict[str, Path], max_pixels: int, default_tile: int) -> None:
    import gradio as gr

    sessions = SessionCache()
    names = list(models)
    with gr.Row():
        with gr.Column():
            image = _upload_image(label="Input image (low resolution)", elem_id="input-image")
            examples = _example_files()
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Real photos")
        with gr.Column():
            teacher = gr.Dropdown(names, value=names[0], label="Teacher (reference) model")
            student = gr.Dropdown(names, value=names[-1], label="Student model")
            backend = gr.Radio(list(UI_BACKENDS), value="auto", label="Backend")
            tile = gr.Slider(0, 1024, value=default_tile, step=16, label="Tile size, LR px (0: whole image)")
            run = gr.Button("Run", variant="primary", elem_id="run-button")
    with gr.Row():
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="out-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="out-student")
    report = gr.Markdown(elem_id="report")

    def upscale(path, teacher_name, student_name, backend_name, tile_px):
        picture = _load_upload(path, max_pixels)
        outputs, lines = [], []
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            if name not in models:
                raise gr.Error(f"unknown {role} model {name!r}")
            try:
                session = sessions.get(models[name], backend_name)
                start = time.perf_counter()
                result = np.asarray(session.run(picture, tile=int(tile_px) or None))
                latency_ms = (time.perf_counter() - start) * 1000
            except ServeError as exc:
                raise gr.Error(f"{role} {name}: {exc}") from None
            outputs.append(result)
            lines.append(f"- **{role}** `{name}` ({session.backend}): {latency_ms:.1f} ms, "
                         f"{picture.width}x{picture.height} -> {result.shape[1]}x{result.shape[0]}")
        lines.append(f"- **student PSNR to teacher**: {_psnr_text(*outputs)}")
        return outputs[0], outputs[1], "\n".join(lines)

    run.click(upscale, inputs=[image, teacher, student, backend, tile], outputs=[out_teacher, out_student, report],
              api_name="upscale")


def _generation_tab(models: dict[str, Path], psi_names: set[str]) -> None:
    import gradio as gr

    sessions = SessionCache()
    names = list(models)
    with gr.Row():
        with gr.Column():
            teacher = gr.Dropdown(names, value=names[0], label="Teacher (reference) model", elem_id="gen-teacher-model")
            student = gr.Dropdown(names, value=names[-1], label="Student model", elem_id="gen-student-model")
            backend = gr.Radio(list(UI_BACKENDS), value="auto", label="Backend")
        with gr.Column():
            seed = gr.Number(value=0, precision=0, minimum=0, label="First seed (images use seed, seed+1, ...)",
                             elem_id="gen-seed")
            count = gr.Slider(1, MAX_GENERATE, value=4, step=1, label="Images", elem_id="gen-count")
            psi = gr.Slider(0.0, 1.0, value=DEFAULT_PSI, step=0.05, label="Truncation psi (1 = none)",
                            visible=bool(psi_names), interactive=_any_psi(psi_names, names[0], names[-1]),
                            elem_id="gen-psi")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
    with gr.Row():
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="gen-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="gen-student")
    report = gr.Markdown(elem_id="gen-report")

    def generate(teacher_name, student_name, backend_name, first_seed, n, psi_value):
        if first_seed is None or first_seed < 0 or int(first_seed) != first_seed:
            raise gr.Error("The seed must be a whole number >= 0.")
        n = int(n)
        if not 1 <= n <= MAX_GENERATE:
            raise gr.Error(f"Generate 1 to {MAX_GENERATE} images.")
        seeds = list(range(int(first_seed), int(first_seed) + n))
        grids, lines = [], []
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            if name not in models:
                raise gr.Error(f"unknown {role} model {name!r}")
            try:
                session = sessions.get(models[name], backend_name)
                used_psi = float(psi_value) if session.has_psi else None
                start = time.perf_counter()
                images = session.generate(seeds, psi=used_psi)
                latency_ms = (time.perf_counter() - start) * 1000
            except ServeError as exc:
                raise gr.Error(f"{role} {name}: {exc}") from None
            grids.append(_grid(images))
            truncation = f"psi {used_psi:g}" if used_psi is not None else "no psi input (psi 1)"
            lines.append(f"- **{role}** `{name}` ({session.backend}): {latency_ms:.1f} ms for {n} image"
                         f"{'s' if n > 1 else ''} ({latency_ms / n:.1f} ms each), {session.size}x{session.size}, "
                         f"{truncation}")
        lines.append(f"- seeds {seeds[0]}..{seeds[-1]}; **student PSNR to teacher**: {_psnr_text(*grids)}")
        return grids[0], grids[1], "\n".join(lines)

    def psi_state(teacher_name, student_name):
        return gr.update(interactive=_any_psi(psi_names, teacher_name, student_name))

    teacher.change(psi_state, inputs=[teacher, student], outputs=[psi], api_name=False)
    student.change(psi_state, inputs=[teacher, student], outputs=[psi], api_name=False)
    run.click(generate, inputs=[teacher, student, backend, seed, count, psi],
              outputs=[out_teacher, out_student, report], api_name="generate")


def _any_psi(psi_names: set[str], *names: str) -> bool:
    return any(name in psi_names for name in names)


def _grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Images of one size in rows of ``columns`` (the last row padded black), 2 px apart."""
    height, width = images[0].shape[:2]
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    gap = 2
    grid = np.zeros((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), np.uint8)
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[top:top + height, left:left + width] = image
    return grid


def _face_tab(models: dict[str, Path], max_pixels: int) -> None:
    import gradio as gr

    sessions = SessionCache()
    names = list(models)
    with gr.Row():
        with gr.Column():
            image = _upload_image(label="Face (clean: it is degraded by the scale first)", elem_id="face-input")
            examples = _face_example_files()
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Real face")
        with gr.Column():
            teacher = gr.Dropdown(names, value=names[0], label="Teacher (reference) model",
                                  elem_id="face-teacher-model")
            student = gr.Dropdown(names, value=names[-1], label="Student model", elem_id="face-student-model")
            backend = gr.Radio(list(UI_BACKENDS), value="auto", label="Backend")
            scale = gr.Slider(FACE_SCALES[0], FACE_SCALES[1], value=16, step=4,
                              label="Scale: the face is shrunk by this factor and blown back up", elem_id="face-scale")
            run = gr.Button("Restore", variant="primary", elem_id="face-run")
    with gr.Row():
        out_lq = gr.Image(label="Low-quality input", format="png", type="numpy", interactive=False, elem_id="face-lq")
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="face-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="face-student")
    report = gr.Markdown(elem_id="face-report")

    def restore(path, teacher_name, student_name, backend_name, factor):
        picture = _load_upload(path, max_pixels).convert("RGB")
        outputs, lines, lq = [], [], None
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            if name not in models:
                raise gr.Error(f"unknown {role} model {name!r}")
            try:
                session = sessions.get(models[name], backend_name)
                own_lq = session.face_lq(picture, float(factor))
                start = time.perf_counter()
                result = session.restore_face_lq(own_lq, float(factor))
                latency_ms = (time.perf_counter() - start) * 1000
            except ServeError as exc:
                raise gr.Error(f"{role} {name}: {exc}") from None
            lq = own_lq if lq is None else lq
            outputs.append(result)
            lines.append(f"- **{role}** `{name}` ({session.backend}): {latency_ms:.1f} ms at "
                         f"{session.size}x{session.size}")
        lines.append(f"- scale x{factor:g} (the input is {picture.width}x{picture.height}, centre-cropped square); "
                     f"**student PSNR to teacher**: {_psnr_text(*outputs)}")
        return lq, outputs[0], outputs[1], "\n".join(lines)

    run.click(restore, inputs=[image, teacher, student, backend, scale],
              outputs=[out_lq, out_teacher, out_student, report], api_name="restore_face")


def _psnr_text(reference: np.ndarray, other: np.ndarray) -> str:
    if reference.shape != other.shape:
        return f"n/a (output sizes differ: {reference.shape[:2]} vs {other.shape[:2]})"
    mse = np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    return "inf dB (identical)" if mse == 0 else f"{10 * np.log10(255.0 ** 2 / mse):.2f} dB"


def _load_upload(path, max_pixels: int):
    """The upload as an 8-bit RGB/RGBA PIL image, or gr.Error with a message the user can act on."""
    import gradio as gr

    from .cli import _open_image

    if not path:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        picture = _open_image(Path(path), max_pixels)
    except ServeError as exc:
        raise gr.Error(f"Cannot use this upload: {exc}.") from None
    if min(picture.size) < MIN_SIDE_PX:
        raise gr.Error(f"The image is {picture.width}x{picture.height} px; it needs at least "
                       f"{MIN_SIDE_PX} px on each side.")
    has_alpha = "A" in picture.mode or (picture.mode == "P" and "transparency" in picture.info)
    return picture.convert("RGBA" if has_alpha else "RGB")


def _upload_image(**kwargs):
    """A gr.Image that hands the function the uploaded file's path without decoding it: gr.Image itself opens the
    file with PIL before the function runs, so a text file or a bomb would fail there with no useful message."""
    import gradio as gr

    class UploadImage(gr.Image):
        def get_block_name(self) -> str:  # the frontend is gr.Image's
            return "image"

        def preprocess(self, payload):
            return None if payload is None else payload.path

    return UploadImage(type="filepath", sources=["upload", "clipboard"], **kwargs)


def _example_files() -> list[str]:
    """Small crops of scikit-image's real photos written as PNGs; none without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return []
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="gankd-demo-examples-"))
    crops = {"astronaut": (data.astronaut, 40, 170), "coffee": (data.coffee, 120, 220)}
    paths = []
    for name, (load, top, left) in crops.items():
        path = folder / f"{name}_96.png"
        Image.fromarray(np.ascontiguousarray(load()[top:top + 96, left:left + 96, :3])).save(path)
        paths.append(str(path))
    return paths


def _face_example_files() -> list[str]:
    """The astronaut's face (scikit-image) as a 256x256 PNG; none without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return []
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="gankd-demo-faces-"))
    path = folder / "astronaut_face.png"
    face = Image.fromarray(np.ascontiguousarray(data.astronaut()[10:210, 125:325]))
    face.resize((256, 256), Image.Resampling.BICUBIC).save(path)
    return [str(path)]


def launch(artifact_dirs: list[Path] | None, host: str, port: int, max_pixels: int = DEFAULT_MAX_PIXELS,
           default_tile: int = 256) -> None:
    demo = build_app(artifact_dirs, max_pixels=max_pixels, default_tile=default_tile)
    demo.launch(server_name=host, server_port=port)
