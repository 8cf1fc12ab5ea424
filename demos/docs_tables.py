"""Fill the results blocks of README.md and docs/*.md from the JSON files the tools wrote under docs/results/.

A figure in the docs is generated from the results file that holds it, so it cannot disagree with that file or with
itself. A block names its file(s) and how to show them; everything between the markers is generated:

    <!-- results: docs/results/issue27_long_perceptual.json table=compare -->
    (the table, written here)
    <!-- /results -->

and one figure inside a sentence (quote an option holding spaces):

    ... in <!-- results: docs/results/quickstart_fresh2_timing.json value=wall_clock -->9:52.65<!-- /results --> ...

``table=``:

- ``compare`` (one or more ``gankd-distill eval --out`` eval.json files): ``demos/results_table.py``'s table;
- ``eval``: PSNR→teacher per model and input kind, as eval.md; ``eval-scores``: every score per model and kind
  (``input=KIND`` keeps one kind); ``eval-speed``: the eval's speed table. ``models=a,b`` keeps those rows;
- ``int8`` (``demos/int8_table.py``'s JSON), ``bench`` (``gankd-bench --json``), ``sweep`` (``gankd-bench --sweep
  --json``), ``soak`` (``demos/soak.py --out``): the table or summary the tool itself prints;
- ``fields``: a field / value table of the file (``keys=a,b/c`` picks and orders fields).

``value=PATH`` (keys joined by ``/``; a list element by index or by ``key=value[&key=value]``) writes one value;
``minus=PATH`` subtracts another and ``over=PATH`` divides by another; ``fmt=`` is a Python format spec (floats
default to ``.2f``).

    python demos/docs_tables.py              # rewrite every block of README.md and docs/*.md (= make docs)
    python demos/docs_tables.py --check      # exit 1 naming each block that differs from its JSON (tests run this)
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import sys
from pathlib import Path

from gankd.serve.errors import first_line
from gankd.serve.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- results: (?P<spec>.*?) -->(?P<body>.*?)<!-- /results -->", re.DOTALL)
OPEN = "<!-- results:"
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
TABLES = ("compare", "eval", "eval-scores", "eval-speed", "int8", "bench", "sweep", "soak", "fields")
OPTIONS = {"table", "value", "minus", "over", "fmt", "models", "input", "keys"}


class BlockError(Exception):
    """A block that cannot be rendered: the message is one line naming the file and the problem."""


# ----------------------------------------------------------------------------------------------- values


def lookup(data, path: str, source: str):
    """The value at ``path`` (``a/b/0/key=value&key2=value2/c``) in ``data``; a missing step is a BlockError."""
    value, steps = data, path.split("/")
    while steps:
        # a key may hold "/" itself ("session / bench ort"): the longest run of steps that is a key wins
        taken = next((n for n in range(len(steps), 0, -1) if isinstance(value, dict) and "/".join(steps[:n]) in value),
                     0)
        if taken:
            value, steps = value["/".join(steps[:taken])], steps[taken:]
            continue
        step, steps = steps[0], steps[1:]
        if isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        elif isinstance(value, list) and "=" in step:  # key=value[&key=value...]: the first element that matches
            wanted = [condition.partition("=")[::2] for condition in step.split("&")]
            value = next((item for item in value if isinstance(item, dict)
                          and all(str(item.get(key)) == text for key, text in wanted)), None)
            if value is None:
                raise BlockError(f"{source}: no element with {step!r} (path {path!r})")
        else:
            raise BlockError(f"{source}: no {step!r} (path {path!r})")
    return value


def show(value, fmt: str | None = None) -> str:
    if isinstance(value, list):
        return " ".join(show(v, fmt) for v in value)
    if isinstance(value, float):  # counts (ints) stay as they are
        return format(value, fmt or ".2f")
    return "—" if value is None else str(value)


# ----------------------------------------------------------------------------------------------- tables


def _rows_of(result: dict, options: dict) -> dict:
    scores = result["scores"]
    if "models" not in options:
        return scores
    names = options["models"].split(",")
    missing = [n for n in names if n not in scores]
    if missing:
        raise BlockError(f"models {', '.join(missing)} not in this eval (it has {', '.join(scores)})")
    return {name: scores[name] for name in names}


def eval_table(result: dict, options: dict) -> str:
    from gankd.distill.report.plots import markdown_table

    kinds = [*result["kinds"], *(["all degraded"] if "all degraded" in result["scores"]["bicubic"] else [])]
    rows = [{"model": name, **{kind: per_kind[kind]["psnr_teacher"] for kind in kinds}}
            for name, per_kind in _rows_of(result, options).items()]
    return "PSNR→teacher (dB)\n\n" + markdown_table(rows, ["model", *kinds])


def eval_scores(result: dict, options: dict) -> str:
    from gankd.distill.report.plots import markdown_table

    kinds = [options["input"]] if "input" in options else \
        [*result["kinds"], *(["all degraded"] if "all degraded" in result["scores"]["bicubic"] else [])]
    bicubic = result["scores"]["bicubic"]
    rows = []
    for name, per_kind in _rows_of(result, options).items():
        for kind in kinds:
            if kind not in per_kind:
                raise BlockError(f"input kind {kind!r} not in this eval")
            mine = per_kind[kind]
            rows.append({"model": name, "input": kind, "PSNR→teacher dB": mine["psnr_teacher"],
                         "Δ bicubic dB": mine["psnr_teacher"] - bicubic[kind]["psnr_teacher"],
                         "VoL/teacher": mine.get("vol_teacher"), "SSIM→teacher": mine.get("ssim_teacher"),
                         "Inception dist": mine.get("inception_teacher")})
    columns = ["model", "input", "PSNR→teacher dB", "Δ bicubic dB", "VoL/teacher", "SSIM→teacher",
               *(["Inception dist"] if result.get("perceptual") else [])]
    return markdown_table(rows, columns, floatfmt=".3f")


def eval_speed(result: dict, options: dict) -> str:
    from gankd.distill.report.evaluate import format_speed

    if not result.get("speed") or not result["speed"].get("median_ms"):
        raise BlockError("this eval has no speed figures (run with --speed)")
    return format_speed(result)


def int8_table(result: dict, options: dict) -> str:
    from gankd.distill.report.plots import markdown_table
    from int8_table import COLUMNS

    return markdown_table(result["rows"], COLUMNS)


def soak_summary(result: dict, options: dict) -> str:
    from soak import summary

    return "```\n" + summary(result)[0] + "\n```"


def fields_table(result: dict, options: dict, source: str) -> str:
    if "keys" in options:
        keys = options["keys"].split(",")
    else:
        keys = [key for key, value in result.items() if not isinstance(value, (dict, list))]
    lines = ["| field | value |", "|---|---|"]
    for key in keys:
        lines.append(f"| {key} | {show(lookup(result, key, source), options.get('fmt'))} |".replace("\n", " "))
    return "\n".join(lines)


def render_table(kind: str, paths: list[Path], options: dict, source: str) -> str:
    if kind == "compare":
        from results_table import table

        return table(paths)
    if len(paths) != 1:
        raise BlockError(f"{source}: table={kind} takes one results file, got {len(paths)}")
    result = load_json(paths[0])
    if kind == "fields":
        return fields_table(result, options, source)
    if kind == "bench":
        from gankd.export.bench import format_table

        return format_table(result)
    if kind == "sweep":
        from gankd.export.sweep import format_table

        return format_table(result)
    render = {"eval": eval_table, "eval-scores": eval_scores, "eval-speed": eval_speed, "int8": int8_table,
              "soak": soak_summary}[kind]
    try:
        return render(result, options)
    except BlockError as error:
        raise BlockError(f"{source}: {error}") from None


# ----------------------------------------------------------------------------------------------- blocks



@functools.cache
def load_json(path: Path):
    """A results file, parsed once however many blocks name it (a returned object is shared: do not change it)."""
    return json.loads(path.read_text(encoding="utf-8"))


def parse(spec: str, root: Path, where: str) -> tuple[list[Path], dict]:
    try:
        tokens = shlex.split(spec)
    except ValueError as error:
        raise BlockError(f"{where}: cannot read the block's options ({error})") from None
    paths, options = [], {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            path = (root / token).resolve()
            if not path.is_relative_to(root):  # a block reads results inside the repo, nothing else
                raise BlockError(f"{where}: {token} is outside {root}")
            paths.append(path)
        elif key in OPTIONS:
            options[key] = value
        else:
            raise BlockError(f"{where}: unknown option {key!r} (options: {', '.join(sorted(OPTIONS))})")
    if not paths:
        raise BlockError(f"{where}: the block names no results file")
    for path in paths:
        if not path.is_file():
            raise BlockError(f"{where}: {path} not found")
    if ("table" in options) == ("value" in options):
        raise BlockError(f"{where}: a block takes table=KIND or value=PATH, exactly one")
    if options.get("table", "compare") not in TABLES:
        raise BlockError(f"{where}: unknown table {options['table']!r} (tables: {', '.join(TABLES)})")
    return paths, options


def render(spec: str, root: Path, where: str) -> str:
    """The generated body of the block whose opening marker holds ``spec``."""
    paths, options = parse(spec, root, where)
    source = f"{where} ({', '.join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths)})"
    if "table" in options:
        return "\n\n" + render_table(options["table"], paths, options, source) + "\n\n"
    if len(paths) != 1:
        raise BlockError(f"{source}: value= takes one results file")
    data = load_json(paths[0])
    value = lookup(data, options["value"], source)
    for option, combine in (("minus", lambda a, b: a - b), ("over", lambda a, b: a / b)):
        if option in options:
            value = combine(value, lookup(data, options[option], source))
    return show(value, options.get("fmt"))


def fill(text: str, root: Path, name: str) -> tuple[str, list[str]]:
    """``text`` with every block regenerated, and the list of blocks that changed (``name:line: spec``). Markers inside
    fenced code (```) are examples, not blocks."""
    fences = [m.span() for m in FENCE.finditer(text)]

    def outside(position: int) -> bool:
        return not any(start <= position < end for start, end in fences)

    matches = [m for m in BLOCK.finditer(text) if outside(m.start())]
    opened = [m.start() for m in re.finditer(re.escape(OPEN), text) if outside(m.start())]
    if len(opened) != len(matches):
        raise BlockError(f"{name}: a '{OPEN} ...' marker without its '<!-- /results -->' (or a block inside another)")
    changed, pieces, last = [], [], 0
    for match in matches:
        where = f"{name}:{text.count(chr(10), 0, match.start()) + 1}"
        try:
            body = render(match["spec"], root, where)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:  # a file of another kind, a text value
            raise BlockError(f"{where}: cannot render {match['spec']!r} ({type(error).__name__}: {error})") from None
        if body != match["body"]:
            changed.append(f"{where}: {match['spec']}")
        pieces += [text[last:match.start("body")], body]
        last = match.end("body")
    return "".join(pieces) + text[last:], changed


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*", help="markdown files [default: README.md and docs/*.md]")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    parser.add_argument("--root", type=Path, default=ROOT, help="where results paths start [default: the repo]")
    args = parser.parse_args(argv)
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # results_table, int8_table, soak (once, however often main runs in one process)
        sys.path.insert(0, here)
    stale = []
    try:
        root = args.root.resolve()
        for path in [p.resolve() for p in args.files] or doc_files(root):
            new, changed = fill(path.read_text(encoding="utf-8"), root,
                                str(path.relative_to(root) if path.is_relative_to(root) else path))
            stale += changed
            if changed and not args.check:
                atomic_write(path, new)
    except BlockError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file argument that is missing or unreadable
        print(f"error: {error.filename or ''}: {error.strerror or first_line(error)}", file=sys.stderr)
        return 2
    for block in stale:
        print(f"{'out of date' if args.check else 'regenerated'}: {block}")
    if stale and args.check:
        print("run `make docs` (python demos/docs_tables.py) to regenerate them from their JSON", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
