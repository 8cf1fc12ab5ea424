"""``gankd-demo``: ``serve`` (the Gradio app; ``gankd-demo [ARTIFACT_DIR ...]`` is short for
``gankd-demo serve [ARTIFACT_DIR ...]``) and ``upscale`` (batch over a folder)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from .errors import ServeError

DEFAULT_MAX_PIXELS = 4096 * 4096


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """gankd demo and serving tools. `gankd-demo [ARTIFACT_DIR ...] [--host H] [--port P]` runs `serve`."""


@cli.command()
@click.argument("artifact_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=1024 * 1024, show_default=True,
              help="refuse uploads with more pixels than this")
@click.option("--tile", type=click.IntRange(min=0), default=256, show_default=True,
              help="default LR tile size in px (0: whole image)")
def serve(artifact_dirs, host, port, max_pixels, tile):
    """The Gradio demo over ARTIFACT_DIRs (teacher first, then students); none: exports/teacher and
    exports/student from `make quickstart`."""
    from .app import launch
    from .session import read_manifest

    for artifact_dir in artifact_dirs:
        read_manifest(artifact_dir)  # a missing or wrong folder fails here in one line, before gradio loads
    launch(list(artifact_dirs) or None, host=host, port=port, max_pixels=max_pixels, default_tile=tile)


@cli.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.argument("in_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["auto", "torch", "ort", "ort-cuda", "trt"]), default="auto",
              show_default=True)
@click.option("--variant", type=click.Choice(["fp32", "int8", "fp16"]), default="fp32", show_default=True)
@click.option("--tile", type=click.IntRange(min=0), default=256, show_default=True,
              help="LR tile size in px; 0 runs each image whole")
@click.option("--pad", type=click.IntRange(min=0), default=10, show_default=True,
              help="reflect padding and tile overlap in LR px")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads of the backend")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="skip inputs with more pixels than this")
def upscale(artifact_dir, in_dir, out_dir, backend, variant, tile, pad, threads, max_pixels):
    """Upscale every image in IN_DIR into OUT_DIR (PNG, same stem); bad files are reported and skipped.
    Exit status 0 when all were written, 1 when some were skipped."""
    from tqdm import tqdm

    from .session import Session

    if not in_dir.is_dir():
        raise ServeError(f"input folder {str(in_dir)!r} does not exist or is not a folder")
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ServeError(f"input folder {str(in_dir)!r} has no files")
    if out_dir.exists() and not out_dir.is_dir():
        raise ServeError(f"output {str(out_dir)!r} is a file, not a folder")
    session = Session(artifact_dir, backend=backend, threads=threads, variant=variant)
    if session.task != "sr":
        raise ServeError(f"upscale runs sr artifacts; {str(artifact_dir)!r} is a {session.task} artifact (use "
                         "gankd.serve.Session in Python, or the demo)")
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for path in tqdm(files, desc="upscale", unit="img", file=sys.stderr):
        try:
            image = _open_image(path, max_pixels)
            session.run(image, tile=tile, pad=pad).save(out_dir / f"{path.stem}.png")
        except (ServeError, OSError) as exc:  # OSError: the PNG could not be written (mode, disk)
            skipped += 1
            tqdm.write(f"skipped {path.name}: {exc}", file=sys.stderr)
    done = len(files) - skipped
    click.echo(f"upscaled {done} of {len(files)} images into {out_dir}" + (f"; skipped {skipped}" if skipped else ""))
    return 1 if skipped else 0


def _open_image(path: Path, max_pixels: int):
    """A fully decoded PIL image, or ServeError (one line) for non-images, truncated files and oversized images.
    The size is checked from the header before decoding, so a decompression bomb is never expanded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise ServeError(f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels} "
                                 "(--max-pixels)")
            image.load()
    except UnidentifiedImageError:
        raise ServeError("not an image PIL can read") from None
    except Image.DecompressionBombError as exc:
        raise ServeError(f"too large ({_first_line(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ServeError(f"cannot decode ({_first_line(exc)})") from None
    return image


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in cli.commands and argv[0] not in ("-h", "--help")):
        argv.insert(0, "serve")  # `gankd-demo [ARTIFACT_DIR ...] [--host H] [--port P]`
    try:
        code = cli.main(args=argv, prog_name="gankd-demo", standalone_mode=False)
    except ServeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
