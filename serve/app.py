"""The Gradio demo: ``build_app(artifact_dirs)`` -> ``gr.Blocks`` (``gankd-demo [ARTIFACT_DIR ...]`` launches it).

One tab per task of the sessions (``session.SESSIONS``; :data:`TABS` holds each one's title and builder), shown only
when an artifact of that task is given (the manifest's ``task``), each comparing a teacher and a student with their
latency (:meth:`TaskTab.compare` runs both, the same way on every tab):

- Super-resolution (``sr``): both on the same upload; the student's PSNR to the teacher.
- Generation (``generate``): the same seeds through both (z of a seed is the same for every artifact of a
  style_dim: ``Session.generate``), shown as grids; psi (truncation) where an artifact was exported with ``--psi``.
- Face SR (``face_sr``): a clean face upload degraded by the chosen scale the GCFSR way; the low-quality input and
  both restorations.

What the server enforces, whatever the widgets say (the limits: docs/serve.md):

- Files: a request can name only its client's own uploads and the demo's examples (``serve.guard``); Gradio's
  ``blocked_paths`` also cover the artifact folders, the working directory and the home directory.
- Work: uploads up to ``max_pixels`` (default ``images.MAX_PIXELS``; and ``MAX_UPLOAD_BYTES``), at least
  ``images.MIN_SIDE_PX`` a side, checked by the reader and again by each Session (``images.check_size``); the tile
  size is 0 (whole image, run as one ``TILE_MAX_PX`` tile at most) or ``TILE_MIN_PX``..``TILE_MAX_PX``; a request
  stops between tiles once it has run ``request_budget_s``; ``CONCURRENCY`` requests run at once and at most
  ``queue_size`` wait; Gradio keeps the state of ``STATE_SESSIONS`` sessions, not its default 10,000.
- Errors: a refused request is one line for the client and one line in the server log (``gankd.serve`` logger),
  with the same request id in both; no traceback.

gradio, PIL and scikit-image import inside the functions: ``import gankd.serve`` stays light.
"""


import functools
import io
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from . import guard
from .errors import OverBudget, ServeError, first_line
from .files import atomic_write
from .images import MAX_PIXELS, Picture, read_image, to_uint8, to_unit
from .manifest import MANIFEST_FILE, input_names, read_manifest, task_of
from .ports import check_port_free, port_message
from .psnr import psnr
from .session import SESSIONS, Session
from .timing import timed_ms

DEFAULT_MAX_PIXELS = MAX_PIXELS  # the one limit of gankd.serve (images.MAX_PIXELS), kept under its old name
QUICKSTART_DIRS = (Path("exports/teacher"), Path("exports/student"))
PORT_HINT = "another gankd-demo?"  # who holds a busy port, most likely
QUICKSTART_HINT = "No model artifacts found. Make them with `make quickstart`, then run `gankd-demo`."
UI_BACKENDS = ("auto", "ort", "ncnn", "torch")  # auto also picks trt / ort-cuda where they run (serve.auto)
CONCURRENCY = 4  # requests one event runs at once; a Session is thread-safe
QUEUE_SIZE = 64  # requests waiting beyond the running ones; more are refused ("queue is full")
TILE_MIN_PX = 16  # a 1 px tile runs the network on 21x21 px windows to keep 1 px: ~440x the work
TILE_MAX_PX = 1024
REQUEST_BUDGET_S = 120.0  # per request (teacher and student together), checked between tiles
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# Gradio keeps the configs of all blocks per session (each API call is a session of its own) for 10,000 sessions by
# default: demos/soak.py saw the demo's memory grow steadily under load. No event here reads earlier state; a few
# hundred cover the running and waiting requests.
STATE_SESSIONS = 256
LOG = logging.getLogger("gankd.serve")
MAX_GENERATE = 8
DEFAULT_PSI = 0.7
FACE_SCALES = (4, 64)  # the face scale slider's range, step 4
ROLES = ("teacher", "student")


def default_artifact_dirs(root: Path | None = None) -> list[Path]:
    """The quickstart's output (``exports/teacher``, ``exports/student``) where it exists under ``root``."""
    root = Path.cwd() if root is None else root
    return [root / d for d in QUICKSTART_DIRS if (root / d / MANIFEST_FILE).is_file()]


class SessionCache:
    """One Session per (artifact folder, backend), created on first use; safe to call from the queue's threads. Each
    applies the demo's pixel limit (the same one the upload reader applies)."""

    def __init__(self, verify: bool = True, max_pixels: int = MAX_PIXELS):
        self._sessions: dict[tuple[Path, str], Session] = {}
        self._lock = threading.Lock()
        self._verify = verify
        self._max_pixels = max_pixels

    def get(self, artifact_dir: Path, backend: str) -> Session:
        key = (artifact_dir, backend)
        with self._lock:  # one lock for all: loading is rare and two loads of one model would waste memory
            if key not in self._sessions:
                session = Session(artifact_dir, backend=backend, verify=self._verify, max_pixels=self._max_pixels)
                LOG.info("%s: backend %s%s", artifact_dir, session.backend,
                         f" ({session.backend_note})" if session.backend_note else "")
                self._sessions[key] = session
            return self._sessions[key]


class Requests:
    """What every event function of one app shares: the files each client may name, the limits, the sessions, and
    the one-line refusal (to the client and to the log, with one request id)."""

    def __init__(self, files: guard.ClientFiles, max_pixels: int, request_budget_s: float, verify: bool):
        self.files, self.max_pixels, self.request_budget_s, self.verify = files, max_pixels, request_budget_s, verify
        self.sessions = SessionCache(verify, max_pixels)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:8]

    @staticmethod
    def refuse(request_id: str, message: str):
        """gr.Error for the client and one log line, both with the request id; the caller raises it."""
        import gradio as gr

        LOG.warning("request %s refused: %s", request_id, message)
        return gr.Error(f"{message} (request {request_id})", print_exception=False)

    def picture(self, request_id: str, path, request) -> Picture:
        """The upload a request named, read by the one image reader, or the refusal."""
        if not path:
            raise self.refuse(request_id, "Upload an image or pick an example first.")
        client = guard.client_of(_cookie_header(request))
        try:
            resolved = self.files.check(client, path)
            return read_image(resolved, self.max_pixels)
        except ServeError as exc:
            raise self.refuse(request_id, f"Cannot use this upload: {exc}.") from None


def _cookie_header(request) -> str:
    try:
        return request.headers.get("cookie", "") if request is not None else ""
    except AttributeError:
        return ""


def build_app(artifact_dirs: list[Path] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              default_tile: int = 256, *, verify: bool = True, request_budget_s: float = REQUEST_BUDGET_S,
              queue_size: int = QUEUE_SIZE):
    """The demo over ``artifact_dirs`` (None: the quickstart's output, if any). Raises ServeError for a folder
    that is not an artifact. ``verify``: check each model file's sha256 when its Session opens. Launch the result
    with its own ``launch()`` (it adds the file guard, Gradio's blocked paths and the upload size limit)."""
    import gradio as gr

    if default_tile != 0 and not TILE_MIN_PX <= default_tile <= TILE_MAX_PX:
        raise ServeError(f"the default tile must be 0 (whole image) or {TILE_MIN_PX} to {TILE_MAX_PX} px, "
                         f"got {default_tile}")
    dirs = default_artifact_dirs() if artifact_dirs is None else [Path(d) for d in artifact_dirs]
    manifests = {d: read_manifest(d) for d in dirs}
    requests = Requests(guard.ClientFiles(), max_pixels, request_budget_s, verify)
    with _guarded_blocks_class()(title="gankd demo") as demo:
        gr.Markdown("# gankd: distilled GANs, teacher vs student")
        if not manifests:
            gr.Markdown(QUICKSTART_HINT)
        for task in SESSIONS:  # one tab per task that has artifacts, in the sessions' order
            models = _named([d for d, manifest in manifests.items() if task_of(manifest) == task])
            if models:
                title, build = TABS[task]
                with gr.Tab(title):
                    build(TaskTab(models, {n: manifests[d] for n, d in models.items()}, requests, default_tile))
    for block in demo.blocks.values():  # example images Gradio copied into its cache: any client may name them
        for path in getattr(block, "keep_in_cache", ()):
            requests.files.add_public(path)
    demo.gankd_files = requests.files
    demo.gankd_blocked = [str(Path(d).resolve()) for d in dirs]
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=queue_size)
    return demo


@functools.lru_cache(maxsize=None)
def _guarded_blocks_class():
    """gr.Blocks whose ``launch`` puts the file guard in front of the app and sets Gradio's own path and size
    limits (made on first use: gradio imports late)."""
    import gradio as gr
    from starlette.middleware import Middleware

    class GuardedBlocks(gr.Blocks):
        gankd_files: guard.ClientFiles
        gankd_blocked: list[str]

        def launch(self, *args, **kwargs):
            app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
            app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                        Middleware(guard.FileGuard, files=self.gankd_files, log=_log_guard)]
            kwargs["blocked_paths"] = [*(kwargs.get("blocked_paths") or []), *_blocked_paths(self.gankd_blocked)]
            kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
            kwargs.setdefault("state_session_capacity", STATE_SESSIONS)
            _ensure_log_handler()
            try:
                return super().launch(*args, app_kwargs=app_kwargs, **kwargs)
            except OSError as exc:
                host, port = kwargs.get("server_name") or "127.0.0.1", kwargs.get("server_port")
                raise ServeError(port_message(host, port, exc, hint=PORT_HINT)) from None

    return GuardedBlocks


def _blocked_paths(artifact_dirs: list[str]) -> list[str]:
    """Gradio's blocked_paths: the artifact folders, the working directory and the home directory, less any that
    holds Gradio's upload folder (blocking it would refuse every upload)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    uploads = get_upload_folder()
    candidates = [*artifact_dirs, os.getcwd(), str(Path.home())]
    return sorted({str(Path(p).resolve()) for p in candidates if not is_in_or_equal(uploads, p)})


def _log_guard(message: str) -> str:
    """The file guard's refusal in the log; returns the request id it logged, which the guard tells the client."""
    request_id = Requests.new_id()
    LOG.warning("request %s refused: %s", request_id, message)
    return request_id


def _ensure_log_handler() -> None:
    """One line per refused request on stderr when nothing else configured the gankd.serve logger."""
    if not LOG.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s gankd-demo %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)


def _named(paths: list[Path]) -> dict[str, Path]:
    """Display name (the folder's name, made unique) -> artifact folder, in the order given."""
    names: dict[str, Path] = {}
    for path in paths:
        name, n = path.name or str(path), 2
        while name in names:
            name, n = f"{path.name} ({n})", n + 1
        names[name] = path
    return names


class Ran(NamedTuple):
    """One model's part of a request: what it returned and how long its timed call took."""

    role: str
    name: str
    session: Session
    result: object
    latency_ms: float


@dataclass(frozen=True)
class TaskTab:
    """What a task's tab is built from: its models (display name -> artifact folder; the teacher first, then the
    students), their manifests, the app's request handling, and the default tile (sr)."""

    models: dict[str, Path]
    manifests: dict[str, dict]
    requests: Requests
    default_tile: int

    def compare(self, request_id: str, names: tuple, backend_name, work: Callable) -> list[Ran]:
        """The teacher, then the student: ``work(session) -> (result, latency_ms)`` on each model's session; any
        refusal (unknown model or backend, a ServeError, the time budget) in one line."""
        requests, runs = self.requests, []
        for role, name in zip(ROLES, names):
            if not isinstance(name, str) or name not in self.models:
                raise requests.refuse(request_id, f"unknown {role} model {name!r:.80}; models: "
                                                  f"{', '.join(self.models)}")
            try:
                session = requests.sessions.get(self.models[name], _backend(backend_name, request_id, requests))
                runs.append(Ran(role, name, session, *work(session)))
            except OverBudget as exc:
                raise requests.refuse(request_id, f"{role} {name}: stopped after {exc.done} of {exc.total} tiles: "
                                                  f"over the time budget of {requests.request_budget_s:g} s per "
                                                  "request (use a smaller image or a larger tile)") from None
            except ServeError as exc:
                raise requests.refuse(request_id, f"{role} {name}: {exc}") from None
        return runs


def _model_choice(names: list[str], teacher_id: str | None = None, student_id: str | None = None):
    """The teacher and student dropdowns and the backend radio of a tab."""
    import gradio as gr

    teacher = _unchecked(gr.Dropdown, names, value=names[0], label="Teacher (reference) model", elem_id=teacher_id)
    student = _unchecked(gr.Dropdown, names, value=names[-1], label="Student model", elem_id=student_id)
    backend = _unchecked(gr.Radio, list(UI_BACKENDS), value="auto", label="Backend")
    return teacher, student, backend


def _output_images(*labelled: tuple[str, str]) -> list:
    """One read-only PNG image per (label, elem_id), in a row, each written to Gradio's cache by
    :func:`_cached_png`."""
    import gradio as gr

    class OutputImage(gr.Image):
        def get_block_name(self) -> str:  # the frontend is gr.Image's
            return "image"

        def postprocess(self, value):
            if isinstance(value, np.ndarray):
                value = _cached_png(value, self.GRADIO_CACHE)
            return super().postprocess(value)

    with gr.Row():
        return [OutputImage(label=label, format="png", type="numpy", interactive=False, elem_id=elem_id)
                for label, elem_id in labelled]


def _cached_png(array: np.ndarray, cache_dir: str) -> str:
    """An output image as a PNG in Gradio's cache, at the path Gradio gives it (the folder named by the content
    hash, so Gradio's own copy step finds it there), written under a temporary name and renamed into place. Gradio's
    writer rewrites that file in place for every request, so a client fetching the same output as another request
    (two users on one example) could read it half written: demos/soak.py got undecodable PNGs that way."""
    from gradio.processing_utils import hash_bytes
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    data = buffer.getvalue()
    folder = Path(cache_dir) / hash_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "image.png"
    if not path.exists():  # the same hash: the same bytes, complete (only a rename puts a file there)
        atomic_write(path, data, fsync=False)  # a cache: a lost file is made again
    return str(path.resolve())


def _upload_with_examples(label: str, elem_id: str, examples: list[str], examples_label: str, requests: Requests):
    """The upload widget of a tab, with its example images (none without scikit-image)."""
    import gradio as gr

    image = _upload_image(label=label, elem_id=elem_id)
    if examples:
        shown = gr.Examples(examples=[[p] for p in examples], inputs=[image], label=examples_label)
        _check_example_index(shown.dataset, len(examples), requests)
    return image


def _check_example_index(dataset, count: int, requests: Requests) -> None:
    """The examples' click event takes an example's index: any other value sent through the API is refused in one
    line, where Gradio would fail inside the event with a traceback in the log."""
    preprocess = dataset.preprocess

    def checked(payload):
        if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < count:
            raise requests.refuse(requests.new_id(), f"unknown example {payload!r:.80}; examples: 0 to {count - 1}")
        return preprocess(payload)

    dataset.preprocess = checked


def _super_resolution_tab(tab: TaskTab) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            image = _upload_with_examples("Input image (low resolution)", "input-image", _example_files(),
                                          "Real photos", tab.requests)
        with gr.Column():
            teacher, student, backend = _model_choice(list(tab.models))
            tile = _unchecked(gr.Slider, 0, TILE_MAX_PX, value=tab.default_tile, step=TILE_MIN_PX,
                              label="Tile size, LR px (0: whole image)")
            run = gr.Button("Run", variant="primary", elem_id="run-button")
    out_teacher, out_student = _output_images(("Teacher", "out-teacher"), ("Student", "out-student"))
    report = gr.Markdown(elem_id="report")
    requests = tab.requests

    def upscale(path, teacher_name, student_name, backend_name, tile_px, request: gr.Request):
        request_id = requests.new_id()
        deadline = time.monotonic() + requests.request_budget_s
        tile_value = _tile(tile_px, request_id, requests)
        picture = requests.picture(request_id, path, request)

        def work(session):
            return timed_ms(session.run, picture.array, tile=tile_value, budget_s=max(deadline - time.monotonic(), 0.0))

        runs = tab.compare(request_id, (teacher_name, student_name), backend_name, work)
        lines = [f"- **{r.role}** `{r.name}` ({r.session.backend}): {r.latency_ms:.1f} ms, "
                 f"{picture.width}x{picture.height} -> {r.result.shape[1]}x{r.result.shape[0]}" for r in runs]
        lines.append(f"- **student PSNR to teacher**: {_psnr_text(*(to_unit(r.result) for r in runs))}")
        if picture.note:
            lines.append(f"- note: {picture.note}")
        return to_uint8(runs[0].result), to_uint8(runs[1].result), "\n".join(lines)

    run.click(upscale, inputs=[image, teacher, student, backend, tile], outputs=[out_teacher, out_student, report],
              api_name="upscale")


def _generation_tab(tab: TaskTab) -> None:
    import gradio as gr

    names = list(tab.models)
    psi_names = {name for name, manifest in tab.manifests.items() if "psi" in input_names(manifest)}
    with gr.Row():
        with gr.Column():
            teacher, student, backend = _model_choice(names, "gen-teacher-model", "gen-student-model")
        with gr.Column():
            seed = _unchecked(gr.Number, value=0, precision=0, minimum=0,
                              label="First seed (images use seed, seed+1, ...)", elem_id="gen-seed")
            count = _unchecked(gr.Slider, 1, MAX_GENERATE, value=4, step=1, label="Images", elem_id="gen-count")
            psi = _unchecked(gr.Slider, 0.0, 1.0, value=DEFAULT_PSI, step=0.05, label="Truncation psi (1 = none)",
                             visible=bool(psi_names), interactive=_any_psi(psi_names, names[0], names[-1]),
                             elem_id="gen-psi")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
    out_teacher, out_student = _output_images(("Teacher", "gen-teacher"), ("Student", "gen-student"))
    report = gr.Markdown(elem_id="gen-report")
    requests = tab.requests

    def generate(teacher_name, student_name, backend_name, first_seed, n, psi_value):
        request_id = requests.new_id()
        if not _whole(first_seed) or first_seed < 0:
            raise requests.refuse(request_id, "The seed must be a whole number >= 0.")
        if not _whole(n) or not 1 <= n <= MAX_GENERATE:
            raise requests.refuse(request_id, f"Generate 1 to {MAX_GENERATE} images.")
        n = int(n)
        seeds = list(range(int(first_seed), int(first_seed) + n))
        used_psi = []  # the psi each model ran with, teacher first (None: no psi input)

        def work(session):
            try:
                psi_number = float(psi_value) if session.has_psi else None
            except (TypeError, ValueError) as exc:  # a psi that is not a number
                raise ServeError(first_line(exc)) from None
            used_psi.append(psi_number)
            images, latency_ms = timed_ms(session.generate, seeds, psi=psi_number)
            return _grid(images), latency_ms

        runs = tab.compare(request_id, (teacher_name, student_name), backend_name, work)
        lines = []
        for r, psi_number in zip(runs, used_psi):
            truncation = f"psi {psi_number:g}" if psi_number is not None else "no psi input (psi 1)"
            lines.append(f"- **{r.role}** `{r.name}` ({r.session.backend}): {r.latency_ms:.1f} ms for {n} image"
                         f"{'s' if n > 1 else ''} ({r.latency_ms / n:.1f} ms each), {r.session.size}x{r.session.size}, "
                         f"{truncation}")
        lines.append(f"- seeds {seeds[0]}..{seeds[-1]}; **student PSNR to teacher**: "
                     f"{_psnr_text(*(r.result for r in runs))}")
        return runs[0].result, runs[1].result, "\n".join(lines)

    def psi_state(teacher_name, student_name):
        return gr.update(interactive=_any_psi(psi_names, teacher_name, student_name))

    teacher.change(psi_state, inputs=[teacher, student], outputs=[psi], api_name=False)
    student.change(psi_state, inputs=[teacher, student], outputs=[psi], api_name=False)
    run.click(generate, inputs=[teacher, student, backend, seed, count, psi],
              outputs=[out_teacher, out_student, report], api_name="generate")


def _tile(tile_px, request_id: str, requests: Requests) -> int:
    """The server's tile size for a request: 0 (whole image) runs as one TILE_MAX_PX tile at most."""
    number = isinstance(tile_px, (int, float)) and not isinstance(tile_px, bool) and math.isfinite(tile_px)
    if number and tile_px == 0:
        return TILE_MAX_PX
    if not number or tile_px != int(tile_px) or not TILE_MIN_PX <= tile_px <= TILE_MAX_PX:
        raise requests.refuse(request_id, f"The tile size must be 0 (whole image) or a whole number from "
                                          f"{TILE_MIN_PX} to {TILE_MAX_PX} px, got {tile_px!r:.80}.")
    return int(tile_px)


def _unchecked(component, *args, **kwargs):
    """A gr.Slider / gr.Number / gr.Dropdown / gr.Radio whose value reaches the event function as sent: the function
    checks it (``_tile``, ``_whole``, ``TaskTab.compare``, ``_backend``, the Session), so an out-of-range value from
    the API gets the same one-line refusal and log line as any other, instead of Gradio's own error with a traceback
    in the log."""
    block_name = component.__name__.lower()

    class Unchecked(component):
        def get_block_name(self) -> str:  # the frontend is the original component's
            return block_name

        def preprocess(self, payload):
            return payload

    return Unchecked(*args, **kwargs)


def _backend(name, request_id: str, requests: Requests) -> str:
    if not isinstance(name, str) or name not in UI_BACKENDS:
        raise requests.refuse(request_id, f"unknown backend {name!r:.80}; backends: {', '.join(UI_BACKENDS)}")
    return name


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value)


def _any_psi(psi_names: set[str], *names) -> bool:
    return any(isinstance(name, str) and name in psi_names for name in names)  # names as sent: maybe not strings


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


def _face_tab(tab: TaskTab) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            image = _upload_with_examples("Face (clean: it is degraded by the scale first)", "face-input",
                                          _face_example_files(), "Real face", tab.requests)
        with gr.Column():
            teacher, student, backend = _model_choice(list(tab.models), "face-teacher-model", "face-student-model")
            scale = _unchecked(gr.Slider, FACE_SCALES[0], FACE_SCALES[1], value=16, step=4,
                               label="Scale: the face is shrunk by this factor and blown back up",
                               elem_id="face-scale")
            run = gr.Button("Restore", variant="primary", elem_id="face-run")
    out_lq, out_teacher, out_student = _output_images(("Low-quality input", "face-lq"), ("Teacher", "face-teacher"),
                                                      ("Student", "face-student"))
    report = gr.Markdown(elem_id="face-report")
    requests = tab.requests

    def restore(path, teacher_name, student_name, backend_name, factor, request: gr.Request):
        request_id = requests.new_id()
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor):
            raise requests.refuse(request_id, f"The scale must be a number, got {factor!r:.80}.")
        picture = requests.picture(request_id, path, request)
        lqs = []  # each model's own low-quality input (the same for models of one size); the teacher's is shown

        def work(session):
            lqs.append(session.face_lq(picture.array, float(factor)))
            return timed_ms(session.restore_face_lq, lqs[-1], float(factor))

        runs = tab.compare(request_id, (teacher_name, student_name), backend_name, work)
        lines = [f"- **{r.role}** `{r.name}` ({r.session.backend}): {r.latency_ms:.1f} ms at "
                 f"{r.session.size}x{r.session.size}" for r in runs]
        lines.append(f"- scale x{factor:g} (the input is {picture.width}x{picture.height}, centre-cropped square); "
                     f"**student PSNR to teacher**: {_psnr_text(*(r.result for r in runs))}")
        return lqs[0], runs[0].result, runs[1].result, "\n".join(lines)

    run.click(restore, inputs=[image, teacher, student, backend, scale],
              outputs=[out_lq, out_teacher, out_student, report], api_name="restore_face")


TABS: dict[str, tuple[str, Callable[[TaskTab], None]]] = {  # task -> its tab's title and builder
    "sr": ("Super-resolution", _super_resolution_tab),
    "generate": ("Generation", _generation_tab),
    "face_sr": ("Face SR", _face_tab),
}


def _psnr_text(reference: np.ndarray, other: np.ndarray) -> str:
    """PSNR of two images of the same kind: uint8 (peak 255), or float in [0, 1] (peak 1, full precision: 16-bit
    outputs are compared as they are, not as their 8-bit display)."""
    if reference.shape != other.shape:
        return f"n/a (output sizes differ: {reference.shape[:2]} vs {other.shape[:2]})"
    db = psnr(reference, other, peak=255.0 if reference.dtype == np.uint8 else 1.0)
    return "inf dB (identical)" if db == math.inf else f"{db:.2f} dB"


def _upload_image(**kwargs):
    """A gr.Image that hands the function the uploaded file's path without decoding it: gr.Image itself opens the
    file with PIL before the function runs, so a text file or a bomb would fail there with no useful message. The
    path is only a name here: the event function checks it against the client's uploads (``serve.guard``) before
    anything reads it, and a payload that is no file at all (a string, a number) gets the same refusal."""
    import gradio as gr

    class UploadImage(gr.Image):  # no __init__ of its own: Gradio sends the frontend the props __init__ names
        def api_info(self):
            return getattr(self, "_schema", None) or super().api_info()

        def get_block_name(self) -> str:  # the frontend is gr.Image's
            return "image"

        def preprocess(self, payload):
            return payload.get("path") if isinstance(payload, dict) else payload  # any other value: refused later

    image = UploadImage(type="filepath", sources=["upload", "clipboard"], **kwargs)
    image._schema = image.api_info()  # gr.Image's, for API clients: they upload a file for this input
    image.data_model = None  # no pydantic check before preprocess: its failure is a traceback in the log
    return image


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
           default_tile: int = 256, *, verify: bool = True, request_budget_s: float = REQUEST_BUDGET_S,
           queue_size: int = QUEUE_SIZE) -> None:
    check_port_free(host, port, hint=PORT_HINT)
    demo = build_app(artifact_dirs, max_pixels=max_pixels, default_tile=default_tile, verify=verify,
                     request_budget_s=request_budget_s, queue_size=queue_size)
    demo.launch(server_name=host, server_port=port)
