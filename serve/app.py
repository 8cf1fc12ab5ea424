"""The Gradio demo: ``build_app(artifact_dirs)`` -> ``gr.Blocks`` (``gankd-demo [ARTIFACT_DIR ...]`` launches it).

One tab per task. Super-resolution now: a teacher and a student side by side on the same upload, each with its
latency for this image, and the student's PSNR to the teacher. A Generation tab (StyleGAN2 artifacts) is added by
writing ``_generation_tab`` and calling it from ``build_app`` where the hook comment says; nothing else changes.

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
    sr_models = _named({d: m for d, m in manifests.items() if m.get("config", {}).get("task", "sr") == "sr"})
    with gr.Blocks(title="gankd demo") as demo:
        gr.Markdown("# gankd: distilled GANs, teacher vs student")
        if not manifests:
            gr.Markdown(QUICKSTART_HINT)
        if sr_models:
            with gr.Tab("Super-resolution"):
                _super_resolution_tab(sr_models, max_pixels, default_tile)
        # Hook for the generation tab: pick the artifacts whose manifest task is "generation" and call
        # `_generation_tab(gen_models)` inside `gr.Tab("Generation")` here.
    demo.queue(default_concurrency_limit=CONCURRENCY)
    return demo


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


def launch(artifact_dirs: list[Path] | None, host: str, port: int, max_pixels: int = DEFAULT_MAX_PIXELS,
           default_tile: int = 256) -> None:
    demo = build_app(artifact_dirs, max_pixels=max_pixels, default_tile=default_tile)
    demo.launch(server_name=host, server_port=port)
