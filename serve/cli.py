"""``gankd-demo``: ``serve`` (the Gradio app; ``gankd-demo [ARTIFACT_DIR ...]`` is short for
``gankd-demo serve [ARTIFACT_DIR ...]``), ``upscale`` (batch over a folder) and ``triton`` (a Triton Inference
Server over the artifacts, ``gankd.serve.triton``)."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import click

from .errors import ServeError, run_cli
from .images import MAX_PIXELS, MAX_PIXELS_LOCAL
from .session import BACKENDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """gankd demo and serving tools. `gankd-demo [ARTIFACT_DIR ...] [--host H] [--port P]` runs `serve`;
    `gankd-demo triton ARTIFACT_DIR ...` runs a Triton Inference Server."""


@cli.command()
@click.argument("artifact_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="refuse uploads with more pixels than this")
@click.option("--tile", type=click.IntRange(min=0), default=256, show_default=True,
              help="default LR tile size in px (0: whole image); requests may use 0 or 16..1024")
@click.option("--request-budget-s", type=click.FloatRange(min=1.0), default=120.0, show_default=True,
              help="time one request (teacher and student) may take; checked between tiles")
@click.option("--queue-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="requests that may wait beyond the 4 running; more are refused")
@click.option("--no-verify", is_flag=True,
              help="load model files whose sha256 differs from manifest.json (graphs edited on purpose)")
def serve(artifact_dirs, host, port, max_pixels, tile, request_budget_s, queue_size, no_verify):
    """The Gradio demo over ARTIFACT_DIRs (teacher first, then students); none: exports/teacher and
    exports/student from `make quickstart`."""
    from .app import PORT_HINT, TILE_MAX_PX, TILE_MIN_PX, default_artifact_dirs, launch
    from .manifest import read_manifest
    from .ports import check_port_free
    from .session import verify_artifact

    if tile != 0 and not TILE_MIN_PX <= tile <= TILE_MAX_PX:
        raise click.BadParameter(f"0 (whole image) or {TILE_MIN_PX} to {TILE_MAX_PX}, got {tile}", param_hint="--tile")

    # every check that can fail in one line runs here, before gradio loads
    for artifact_dir in artifact_dirs or default_artifact_dirs():
        read_manifest(artifact_dir)
        if not no_verify:
            verify_artifact(artifact_dir)
    check_port_free(host, port, hint=PORT_HINT)
    launch(list(artifact_dirs) or None, host=host, port=port, max_pixels=max_pixels, default_tile=tile,
           verify=not no_verify, request_budget_s=request_budget_s, queue_size=queue_size)


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.argument("in_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: the fastest verified runtime on this machine (measured at export or on first use)")
@click.option("--variant", type=click.Choice(["fp32", "int8", "fp16"]), default="fp32", show_default=True)
@click.option("--tile", type=click.IntRange(min=0), default=256, show_default=True,
              help="LR tile size in px; 0 runs each image whole")
@click.option("--pad", type=click.IntRange(min=0), default=10, show_default=True,
              help="reflect padding and tile overlap in LR px")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads of the backend")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS_LOCAL, show_default=True,
              help="skip inputs with more pixels than this (servers default to a lower bar: they hold whole outputs "
                   "of concurrent requests in memory)")
@click.option("--no-verify", is_flag=True,
              help="load a model file whose sha256 differs from manifest.json (a graph edited on purpose)")
def upscale(artifact_dir, in_dir, out_dir, backend, variant, tile, pad, threads, max_pixels, no_verify):
    """Upscale every image and video in IN_DIR into OUT_DIR: an image as PNG (same stem), a video as a video of the
    same container (same name; audio copied, frame rate and count kept; needs PyAV). Bad files are reported and
    skipped; a video that breaks off keeps the frames written before the break.
    Images are read as the demo reads them (EXIF orientation applied, 16-bit kept, first frame of an animation).
    Files whose outputs would share a name (a.png and a.jpg) get distinct ones (a.png, a.jpg.png), said in a note;
    no output replaces another output of the run or an input. Exit status 0 when all were written whole, 1 when
    some were skipped or cut short."""
    from tqdm import tqdm

    from .images import read_image, save_image
    from .session import Session, SRSession
    from .video import is_video, upscale_video

    if not in_dir.is_dir():
        raise ServeError(f"input folder {str(in_dir)!r} " + ("is a file, not a folder" if in_dir.exists() else
                                                             "does not exist"))
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ServeError(f"input folder {str(in_dir)!r} has no files")
    if out_dir.exists() and not out_dir.is_dir():
        raise ServeError(f"output {str(out_dir)!r} is a file, not a folder")
    session = Session(artifact_dir, backend=backend, threads=threads, variant=variant, verify=not no_verify,
                      max_pixels=max_pixels)
    if not isinstance(session, SRSession):
        raise ServeError(f"upscale runs sr artifacts; {str(artifact_dir)!r} is a {session.task} artifact (use "
                         "gankd.serve.Session in Python, or the demo)")
    click.echo(backend_line(session), err=True)
    in_place = out_dir.is_dir() and os.path.samefile(out_dir, in_dir)
    names = output_names(files, taken={p.name for p in in_dir.iterdir()} if in_place else set(),
                         extension=lambda p: p.suffix.lower() if is_video(p) else ".png")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = cut_short = 0
    for path in tqdm(files, desc="upscale", unit="file", file=sys.stderr):
        note = ""
        try:
            if is_video(path):
                result = upscale_video(session, path, out_dir / names[path], tile=tile, pad=pad)
                if result.stopped:
                    cut_short += 1
                    tqdm.write(f"partial {path.name}: {result.stopped}; kept the {result.frames} frames written "
                               f"before it in {names[path]}", file=sys.stderr)
            else:
                picture = read_image(path, max_pixels)
                save_image(session.run(picture.array, tile=tile, pad=pad), out_dir / names[path])
                note = picture.note
        except (ServeError, OSError) as exc:  # OSError: the output could not be written (disk)
            tqdm.write(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        written += 1
        natural = f"{path.stem}{path.suffix.lower() if is_video(path) else '.png'}"
        if names[path] != natural:
            tqdm.write(f"note {path.name}: written as {names[path]}, not {natural} (another file of the folder "
                       "has that name or stem)", file=sys.stderr)
        if note:
            tqdm.write(f"note {path.name}: {note}", file=sys.stderr)
    skipped = len(files) - written
    noun = "files" if any(is_video(p) for p in files) else "images"
    click.echo(f"upscaled {written} of {len(files)} {noun} into {out_dir}" + (f"; skipped {skipped}" if skipped
                                                                              else "")
               + (f"; {cut_short} video{'s' if cut_short > 1 else ''} cut short" if cut_short else ""))
    return 1 if skipped or cut_short else 0


def backend_line(session) -> str:
    """What every tool prints once a Session is open: the backend served and why (``Session.backend_note``)."""
    return f"backend: {session.backend}" + (f" ({session.backend_note})" if session.backend_note else "")


def output_names(files: list[Path], taken: set[str] = frozenset(), extension=lambda path: ".png") -> dict[Path, str]:
    """Each input's output file name in one run of ``upscale``, never the same twice and never one of ``taken`` (the
    input folder's own names when writing into it), compared case-insensitively (``A.png`` and ``a.png`` are one
    file on macOS and Windows): ``<stem>.png``; when that is taken, ``<name>.png`` (``a.jpg.png``), then
    ``<name>-2.png``, ... A ``<stem>.png`` no other input shares and ``taken`` lacks is always kept; of a shared one,
    the file already called ``<stem>.png`` keeps it. ``extension(path)`` replaces ``.png`` per file (a video keeps
    its own suffix: ``clip.mp4`` -> ``clip.mp4``, or ``clip.mp4-2.mp4`` when writing into the input folder)."""
    natural = {path: f"{path.stem}{extension(path)}" for path in files}
    shared = Counter(name.casefold() for name in natural.values())
    used = {name.casefold() for name in taken}

    def contested(path: Path) -> bool:  # these go last, so a fallback name never takes a free one
        return shared[natural[path].casefold()] > 1 or natural[path].casefold() in used

    names = {}
    for path in sorted(files, key=lambda p: (contested(p), p.name != natural[p], p.name)):
        name, n, ext = natural[path], 1, extension(path)
        if name.casefold() in used:
            name = f"{path.name}{ext}"
        while name.casefold() in used:
            n += 1
            name = f"{path.name}-{n}{ext}"
        used.add(name.casefold())
        names[path] = name
    return names


@cli.command()
@click.argument("artifact_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="address of all three endpoints")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Triton max_batch_size: images per forward call (1: no dynamic batching)")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="how long the dynamic batcher waits to fill a batch")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="model instances per artifact (processes, each with its own Session)")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: the fastest verified runtime on this machine, chosen once per model at start")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads per instance")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="refuse sr images with more pixels (H x W) than this")
@click.option("--no-verify", is_flag=True,
              help="load model files whose sha256 differs from manifest.json (graphs edited on purpose)")
def triton(artifact_dirs, host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, instances,
           backend, threads, max_pixels, no_verify):
    """Serve ARTIFACT_DIRs from a Triton Inference Server (PyTriton's tritonserver): one model per folder, named
    after it, with dynamic batching, HTTP/gRPC (tritonclient) and Prometheus metrics. SIGTERM or Ctrl-C lets
    in-flight requests finish and exits 0."""
    import signal
    import threading

    from .triton import TritonServer, TritonSettings

    settings = TritonSettings(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                              max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances,
                              backend=backend, threads=threads, max_pixels=max_pixels, verify=not no_verify)
    server = TritonServer(artifact_dirs, settings).start()
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        ends = server.endpoints
        click.echo(f"serving {', '.join(server.names)} (Triton, max batch {max_batch}, "
                   f"{instances} instance{'s' if instances > 1 else ''} each)")
        for name, (chosen, why) in server.backends.items():
            click.echo(f"  {name}: backend {chosen}" + (f" ({why})" if why else ""))
        click.echo(f"  HTTP     {ends['http']}   (POST /v2/models/<name>/infer; stats: /v2/models/<name>/stats)")
        click.echo(f"  gRPC     {ends['grpc']}")
        click.echo(f"  metrics  {ends['metrics']}")
        click.echo("SIGTERM or Ctrl-C stops after in-flight requests", nl=True)
        sys.stdout.flush()
        while not stop.wait(1.0):
            if not server.is_alive():
                raise ServeError("tritonserver exited unexpectedly")
        click.echo("stopping: letting in-flight requests finish")
    finally:
        server.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    click.echo("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in cli.commands and argv[0] not in ("-h", "--help")):
        argv.insert(0, "serve")  # `gankd-demo [ARTIFACT_DIR ...] [--host H] [--port P]`
    return run_cli(lambda: cli.main(args=argv, prog_name="gankd-demo", standalone_mode=False), (ServeError,))


if __name__ == "__main__":
    sys.exit(main())
