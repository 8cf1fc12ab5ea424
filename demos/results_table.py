"""A markdown table of several `gankd-distill eval --out` results (their eval.json files): one row per model and
file, PSNR to the teacher on clean and on degraded inputs (pooled), its margin over bicubic (of the same file's
crops), VoL/teacher and the Inception feature distance to the teacher (— where the eval skipped it). The docs'
tables of eval results are made with it (``demos/docs_tables.py``, ``table=compare``), so a figure in the docs is
the one a results file holds.

    python demos/results_table.py docs/results/issue27_quickstart_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ALL = "all degraded"


def rows(path: Path, seen: set[str]) -> list[str]:
    result = json.loads(path.read_text())
    scores = result["scores"]
    bicubic = scores["bicubic"]
    out = []
    for name, per_kind in scores.items():
        if name in seen:  # bicubic and the references repeat across files of the same crops
            continue
        seen.add(name)
        clean, degraded = per_kind.get("clean", {}), per_kind.get(ALL, {})
        cells = [name, path.name]
        for part, mine in (("clean", clean), (ALL, degraded)):
            if "psnr_teacher" in mine:
                cells.append(f"{mine['psnr_teacher']:.2f} ({mine['psnr_teacher'] - bicubic[part]['psnr_teacher']:+.2f})")
            else:
                cells.append("—")
        for key in ("vol_teacher", "inception_teacher"):
            cells.append(" / ".join(f"{m[key]:.3f}" if m.get(key) is not None else "—" for m in (clean, degraded)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def table(paths: list[Path]) -> str:
    """The table of ``paths`` (eval.json files, in order; a model already listed is not repeated), with its CPU line."""
    header = ("| model | results file | clean PSNR→teacher (Δ bicubic) | degraded PSNR→teacher (Δ bicubic) "
              "| VoL/teacher clean / degraded | Inception dist clean / degraded |")
    lines = [header, "|---|---|---:|---:|---|---|"]
    seen: set[str] = set()
    for path in paths:
        lines += rows(path, seen)
    cpus = {json.loads(p.read_text())["cpu"]["model"] for p in paths}
    lines.append(f"\nCPU: {', '.join(sorted(c or 'unknown' for c in cpus))}; crops and seeds: as each file records.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    print(table(args.files))


if __name__ == "__main__":
    main()
