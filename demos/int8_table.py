"""The INT8 outcome of artifact folders (each ``gankd-export --int8``'s manifest), as one JSON results file and a
markdown table: how the file was made (QAT or calibrated), whether the gate wrote it, PSNR to the teacher of fp32
and INT8 on held-out crops, clean and degraded, and the speed-up over fp32 ONNX on the export's machine.

    python demos/int8_table.py NAME=ARTIFACT_DIR... --out docs/results/int8.json   # also writes int8.md beside it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gankd.distill.report.plots import markdown_table
from gankd.export.manifest import read_manifest

COLUMNS = ["model", "INT8 from", "written", "judged by", "fp32 clean", "INT8 clean", "Δ clean", "fp32 degraded",
           "INT8 degraded", "Δ degraded", "PSNR→fp32 dB", "speed-up", "CPU", "CPU int8 flags"]


def row(name: str, manifest: dict) -> dict:
    outcome = manifest.get("int8") or {}
    gate, quant = outcome.get("gate", {}), outcome.get("quantization", {})
    teacher = gate.get("teacher") or {}
    out = {"model": name, "INT8 from": "QAT" if quant.get("qat") else "calibration",
           "written": outcome.get("written"), "judged by": gate.get("judged_by"),
           "speed-up": gate.get("speedup"), "PSNR→fp32 dB": gate.get("psnr_db"),
           "CPU": (quant.get("calibration_cpu") or {}).get("model"),
           "CPU int8 flags": " ".join((quant.get("calibration_cpu") or {}).get("flags") or [])}
    for kind in ("clean", "degraded"):
        fp32, int8 = teacher.get("fp32", {}).get(kind), teacher.get("int8", {}).get(kind)
        out[f"fp32 {kind}"], out[f"INT8 {kind}"] = fp32, int8
        out[f"Δ {kind}"] = int8 - fp32 if fp32 is not None and int8 is not None else None
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", help="NAME=ARTIFACT_DIR")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (and .md beside it)")
    args = parser.parse_args(argv)
    rows, raw = [], {}
    for item in args.artifacts:
        name, _, folder = item.partition("=")
        manifest = read_manifest(Path(folder))
        raw[name] = {"artifact": folder, "int8": manifest.get("int8")}
        rows.append(row(name, manifest))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "manifests": raw}, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(rows, COLUMNS)
    args.out.with_suffix(".md").write_text(
        "PSNR to the teacher (dB) on the export's held-out crops, fp32 and INT8 ONNX; speed-up: INT8 over fp32 ONNX "
        "at the export's --opt-shape, interleaved, on the CPU named (from `python demos/int8_table.py`).\n\n"
        + table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
