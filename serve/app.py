"""The Gradio demo: ``build_app(artifact_dirs)`` -> ``gr.Blocks`` (``gankd-demo [ARTIFACT_DIR ...]`` launches it).

One tab per task, shown only when an artifact of that task is given (the manifest's ``task``), each comparing a
teacher and a student with their latency:

- Super-resolution (``sr``): both on the same upload; the student's PSNR to the teacher.
- Generation (``generate``): the same seeds through both (z of a seed is the same for every artifact of a
  style_dim: ``Session.generate``), shown as grids; psi (truncation) where an artifact was exported with ``--psi``.
- Face SR (``face_sr``): a clean face upload degraded by the chosen scale the GCFSR way; the low-quality input and
  both restorations.

What the server enforces, whatever the widgets say (figures in README "Serve and demo"):

- Files: a request can name only its client's own uploads and the demo's examples (``serve.guard``); Gradio's
  ``blocked_paths`` also cover the artifact folders, the working directory and the home directory.
- Work: uploads up to ``max_pixels`` (and ``MAX_UPLOAD_BYTES``), at least ``images.MIN_SIDE_PX`` a side; the tile
  size is 0 (whole image, run as one ``TILE_MAX_PX`` tile at most) or ``TILE_MIN_PX``..``TILE_MAX_PX``; a request
  stops between tiles once it has run ``request_budget_s``; ``CONCURRENCY`` requests run at once and at most
  ``queue_size`` wait.
- Errors: a refused request is one line for the client and one line in the server log (``gankd.serve`` logger),
  with the same request id in both; no traceback.

gradio, PIL and scikit-image import inside the functions: ``import gankd.serve`` stays light.
"""


import errno
import functools
import logging
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from . import guard
from .errors import OverBudget, ServeError
from .images import Picture, read_image, to_uint8, to_unit
from .session import Session, read_manifest

DEFAULT_MAX_PIXELS = 1024 * 1024
QUICKSTART_DIRS = (Path("exports/teacher"), Path("exports/student"))
QUICKSTART_HINT = "No model artifacts found. Make them with `make quickstart`, then run `gankd-demo`."
UI_BACKENDS = ("auto", "ort", "torch")
CONCURRENCY = 4  # requests one event runs at once; a Session is thread-safe
QUEUE_SIZE = 64  # requests waiting beyond the running ones; more are refused ("queue is full")
TILE_MIN_PX = 16  # a 1 px tile runs the network on 21x21 px windows to keep 1 px: ~440x the work
TILE_MAX_PX = 1024
REQUEST_BUDGET_S = 120.0  # per request (teacher and student together), checked between tiles
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
LOG = logging.getLogger("gankd.serve")
MAX_GENERATE = 8
DEFAULT_PSI = 0.7
FACE_SCALES = (4, 64)  # the face scale slider's range, step 4


def default_artifact_dirs(root: Path | None = None) -> list[Path]:
    """The quickstart's output (``exports/teacher``, ``exports/student``) where it exists under ``root``."""
    root = Path.cwd() if root is None else root
    return [root / d for d in QUICKSTART_DIRS if (root / d / "manifest.json").is_file()]


class SessionCache:
    """One Session per (artifact folder, backend), created on first use; safe to call from the queue's threads."""

    def __init__(self, verify: bool = True):
        self._sessions: dict[tuple[Path, str], Session] = {}
        self._lock = threading.Lock()
        self._verify = verify

    def get(self, artifact_dir: Path, backend: str) -> Session:
        key = (artifact_dir, backend)
        with self._lock:  # one lock for all: loading is rare and two loads of one model would waste memory
            if key not in self._sessions:
                self._sessions[key] = Session(artifact_dir, backend=backend, verify=self._verify)
            return self._sessions[key]


class Requests:
    """What every event function of one app shares: the files each client may name, the limits, and the one-line
    refusal (to the client and to the log, with one request id)."""

    def __init__(self, files: guard.ClientFiles, max_pixels: int, request_budget_s: float, verify: bool):
        self.files, self.max_pixels, self.request_budget_s, self.verify = files, max_pixels, request_budget_s, verify

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
    by_task = {task: _named({d: m for d, m in manifests.items() if _task(m) == task})
               for task in ("sr", "generate", "face_sr")}
    requests = Requests(guard.ClientFiles(), max_pixels, request_budget_s, verify)
    with _guarded_blocks_class()(title="gankd demo") as demo:
        gr.Markdown("# gankd: distilled GANs, teacher vs student")
        if not manifests:
            gr.Markdown(QUICKSTART_HINT)
        if by_task["sr"]:
            with gr.Tab("Super-resolution"):
                _super_resolution_tab(by_task["sr"], requests, default_tile)
        if by_task["generate"]:
            with gr.Tab("Generation"):
                psi_names = {name for name, d in by_task["generate"].items()
                             if any(spec.get("name") == "psi" for spec in manifests[d]["inputs"])}
                _generation_tab(by_task["generate"], psi_names, requests)
        if by_task["face_sr"]:
            with gr.Tab("Face SR"):
                _face_tab(by_task["face_sr"], requests)
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
            _ensure_log_handler()
            try:
                return super().launch(*args, app_kwargs=app_kwargs, **kwargs)
            except OSError as exc:
                host, port = kwargs.get("server_name") or "127.0.0.1", kwargs.get("server_port")
                raise ServeError(_port_message(host, port, exc)) from None

    return GuardedBlocks


def _blocked_paths(artifact_dirs: list[str]) -> list[str]:
    """Gradio's blocked_paths: the artifact folders, the working directory and the home directory, less any that
    holds Gradio's upload folder (blocking it would refuse every upload)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    uploads = get_upload_folder()
    candidates = [*artifact_dirs, os.getcwd(), str(Path.home())]
    return sorted({str(Path(p).resolve()) for p in candidates if not is_in_or_equal(uploads, p)})


def _log_guard(message: str) -> None:
    LOG.warning("request %s refused: %s", Requests.new_id(), message)


def _ensure_log_handler() -> None:
    """One line per refused request on stderr when nothing else configured the gankd.serve logger."""
    if not LOG.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s gankd-demo %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)


def _port_message(host: str, port: int | None, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    busy = getattr(exc, "errno", None) == errno.EADDRINUSE or "empty port" in text  # gradio: "Cannot find empty port"
    if busy:
        return f"port {port} on {host} is in use (another gankd-demo?); pass --port with a free one"
    return f"cannot listen on {host}:{port}: {text}"


def check_port_free(host: str, port: int) -> None:
    """ServeError (one line) when ``host:port`` cannot be bound: before gradio loads, so a busy port fails fast.
    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by a stopped demo counts as free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ServeError(_port_message(host, port, exc)) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ServeError(_port_message(host, port, exc)) from None


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


def _super_resolution_tab(models: dict[str, Path], requests: Requests, default_tile: int) -> None:
    import gradio as gr

    sessions = SessionCache(requests.verify)
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
            tile = _unchecked(gr.Slider, 0, TILE_MAX_PX, value=default_tile, step=TILE_MIN_PX,
                              label="Tile size, LR px (0: whole image)")
            run = gr.Button("Run", variant="primary", elem_id="run-button")
    with gr.Row():
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="out-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="out-student")
    report = gr.Markdown(elem_id="report")

    def upscale(path, teacher_name, student_name, backend_name, tile_px, request: gr.Request):
        request_id = requests.new_id()
        deadline = time.monotonic() + requests.request_budget_s
        tile_value = _tile(tile_px, request_id, requests)
        picture = requests.picture(request_id, path, request)
        outputs, lines = [], []
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            _check_choice(role, name, models, request_id, requests)
            try:
                session = sessions.get(models[name], _backend(backend_name, request_id, requests))
                start = time.perf_counter()
                result = session.run(picture.array, tile=tile_value,
                                     budget_s=max(deadline - time.monotonic(), 0.0))
                latency_ms = (time.perf_counter() - start) * 1000
            except OverBudget as exc:
                raise requests.refuse(request_id, f"{role} {name}: stopped after {exc.done} of {exc.total} tiles: "
                                                  f"over the time budget of {requests.request_budget_s:g} s per "
                                                  "request (use a smaller image or a larger tile)") from None
            except ServeError as exc:
                raise requests.refuse(request_id, f"{role} {name}: {exc}") from None
            outputs.append(result)
            lines.append(f"- **{role}** `{name}` ({session.backend}): {latency_ms:.1f} ms, "
                         f"{picture.width}x{picture.height} -> {result.shape[1]}x{result.shape[0]}")
        lines.append(f"- **student PSNR to teacher**: {_psnr_text(*(to_unit(o) for o in outputs))}")
        if picture.note:
            lines.append(f"- note: {picture.note}")
        return to_uint8(outputs[0]), to_uint8(outputs[1]), "\n".join(lines)

    run.click(upscale, inputs=[image, teacher, student, backend, tile], outputs=[out_teacher, out_student, report],
              api_name="upscale")


def _generation_tab(models: dict[str, Path], psi_names: set[str], requests: Requests) -> None:
    import gradio as gr

    sessions = SessionCache(requests.verify)
    names = list(models)
    with gr.Row():
        with gr.Column():
            teacher = gr.Dropdown(names, value=names[0], label="Teacher (reference) model", elem_id="gen-teacher-model")
            student = gr.Dropdown(names, value=names[-1], label="Student model", elem_id="gen-student-model")
            backend = gr.Radio(list(UI_BACKENDS), value="auto", label="Backend")
        with gr.Column():
            seed = _unchecked(gr.Number, value=0, precision=0, minimum=0,
                              label="First seed (images use seed, seed+1, ...)", elem_id="gen-seed")
            count = _unchecked(gr.Slider, 1, MAX_GENERATE, value=4, step=1, label="Images", elem_id="gen-count")
            psi = _unchecked(gr.Slider, 0.0, 1.0, value=DEFAULT_PSI, step=0.05, label="Truncation psi (1 = none)",
                             visible=bool(psi_names), interactive=_any_psi(psi_names, names[0], names[-1]),
                             elem_id="gen-psi")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
    with gr.Row():
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="gen-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="gen-student")
    report = gr.Markdown(elem_id="gen-report")

    def generate(teacher_name, student_name, backend_name, first_seed, n, psi_value):
        request_id = requests.new_id()
        if not _whole(first_seed) or first_seed < 0:
            raise requests.refuse(request_id, "The seed must be a whole number >= 0.")
        if not _whole(n) or not 1 <= n <= MAX_GENERATE:
            raise requests.refuse(request_id, f"Generate 1 to {MAX_GENERATE} images.")
        n = int(n)
        seeds = list(range(int(first_seed), int(first_seed) + n))
        grids, lines = [], []
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            _check_choice(role, name, models, request_id, requests)
            try:
                session = sessions.get(models[name], _backend(backend_name, request_id, requests))
                used_psi = float(psi_value) if session.has_psi else None
                start = time.perf_counter()
                images = session.generate(seeds, psi=used_psi)
                latency_ms = (time.perf_counter() - start) * 1000
            except (ServeError, TypeError, ValueError) as exc:  # TypeError/ValueError: a psi that is not a number
                raise requests.refuse(request_id, f"{role} {name}: {exc}") from None
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


def _tile(tile_px, request_id: str, requests: Requests) -> int:
    """The server's tile size for a request: 0 (whole image) runs as one TILE_MAX_PX tile at most."""
    number = isinstance(tile_px, (int, float)) and not isinstance(tile_px, bool) and math.isfinite(tile_px)
    if number and tile_px == 0:
        return TILE_MAX_PX
    if not number or tile_px != int(tile_px) or not TILE_MIN_PX <= tile_px <= TILE_MAX_PX:
        raise requests.refuse(request_id, f"The tile size must be 0 (whole image) or a whole number from "
                                          f"{TILE_MIN_PX} to {TILE_MAX_PX} px, got {tile_px!r}.")
    return int(tile_px)


def _unchecked(component, *args, **kwargs):
    """A gr.Slider / gr.Number whose value reaches the event function as sent: the function checks it (``_tile``,
    ``_whole``, the Session), so an out-of-range value from the API gets the same one-line refusal and log line as
    any other, instead of Gradio's own error with a traceback in the log."""
    block_name = component.__name__.lower()

    class Unchecked(component):
        def get_block_name(self) -> str:  # the frontend is the original component's
            return block_name

        def preprocess(self, payload):
            return payload

    return Unchecked(*args, **kwargs)


def _check_choice(role: str, name, models: dict[str, Path], request_id: str, requests: Requests) -> None:
    if name not in models:
        raise requests.refuse(request_id, f"unknown {role} model {name!r}")


def _backend(name, request_id: str, requests: Requests) -> str:
    if name not in UI_BACKENDS:
        raise requests.refuse(request_id, f"unknown backend {name!r}; backends: {', '.join(UI_BACKENDS)}")
    return name


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value)


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


def _face_tab(models: dict[str, Path], requests: Requests) -> None:
    import gradio as gr

    sessions = SessionCache(requests.verify)
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
            scale = _unchecked(gr.Slider, FACE_SCALES[0], FACE_SCALES[1], value=16, step=4,
                               label="Scale: the face is shrunk by this factor and blown back up",
                               elem_id="face-scale")
            run = gr.Button("Restore", variant="primary", elem_id="face-run")
    with gr.Row():
        out_lq = gr.Image(label="Low-quality input", format="png", type="numpy", interactive=False, elem_id="face-lq")
        out_teacher = gr.Image(label="Teacher", format="png", type="numpy", interactive=False, elem_id="face-teacher")
        out_student = gr.Image(label="Student", format="png", type="numpy", interactive=False, elem_id="face-student")
    report = gr.Markdown(elem_id="face-report")

    def restore(path, teacher_name, student_name, backend_name, factor, request: gr.Request):
        request_id = requests.new_id()
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor):
            raise requests.refuse(request_id, f"The scale must be a number, got {factor!r}.")
        picture = requests.picture(request_id, path, request)
        outputs, lines, lq = [], [], None
        for role, name in (("teacher", teacher_name), ("student", student_name)):
            _check_choice(role, name, models, request_id, requests)
            try:
                session = sessions.get(models[name], _backend(backend_name, request_id, requests))
                own_lq = session.face_lq(picture.array, float(factor))
                start = time.perf_counter()
                result = session.restore_face_lq(own_lq, float(factor))
                latency_ms = (time.perf_counter() - start) * 1000
            except ServeError as exc:
                raise requests.refuse(request_id, f"{role} {name}: {exc}") from None
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
    """PSNR of two images of the same kind: uint8 (peak 255), or float in [0, 1] (peak 1, full precision: 16-bit
    outputs are compared as they are, not as their 8-bit display)."""
    if reference.shape != other.shape:
        return f"n/a (output sizes differ: {reference.shape[:2]} vs {other.shape[:2]})"
    peak = 255.0 if reference.dtype == np.uint8 else 1.0
    mse = np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    return "inf dB (identical)" if mse == 0 else f"{10 * np.log10(peak ** 2 / mse):.2f} dB"


def _upload_image(**kwargs):
    """A gr.Image that hands the function the uploaded file's path without decoding it: gr.Image itself opens the
    file with PIL before the function runs, so a text file or a bomb would fail there with no useful message. The
    path is only a name here: the event function checks it against the client's uploads (``serve.guard``) before
    anything reads it."""
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
           default_tile: int = 256, *, verify: bool = True, request_budget_s: float = REQUEST_BUDGET_S,
           queue_size: int = QUEUE_SIZE) -> None:
    check_port_free(host, port)
    demo = build_app(artifact_dirs, max_pixels=max_pixels, default_tile=default_tile, verify=verify,
                     request_budget_s=request_budget_s, queue_size=queue_size)
    demo.launch(server_name=host, server_port=port)
