"""The CPU a figure was measured on, from /proc/cpuinfo: the one reader for every report, bench and runtime choice
(the bottom layer, so serve's ``auto`` and distill's and export's reports quote the same line)."""

from __future__ import annotations

from pathlib import Path

# the /proc/cpuinfo flags that decide how fast ORT and ncnn run: vector width, FMA, and the int8/bf16 dot products
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpuinfo_blocks(cpuinfo: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one {field: value} dict per logical CPU."""
    return [dict(_fields(block)) for block in cpuinfo.strip().split("\n\n") if block.strip()]


def _fields(block: str):
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def read_cpuinfo() -> str | None:
    """The text of /proc/cpuinfo; None where it does not exist (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU a figure was measured on: model name, family/model numbers (both AMD EPYCs read "AMD EPYC"; Zen 4 is
    family 25 model 17) and which of :data:`SPEED_FLAGS` it has. Values are None where /proc/cpuinfo is missing."""
    blocks = cpuinfo_blocks(cpuinfo if cpuinfo is not None else read_cpuinfo() or "")
    if not blocks:
        return {"model": None, "family": None, "model_number": None, "flags": None, "logical_cpus": None}
    first = blocks[0]
    flags = set(first.get("flags", "").split())
    return {"model": first.get("model name"), "family": first.get("cpu family"), "model_number": first.get("model"),
            "flags": [f for f in SPEED_FLAGS if f in flags], "logical_cpus": len(blocks)}


def cpu_line(cpu: dict) -> str:
    """One line to quote with a figure: ``CPU: <model> (family F, model M; flags: ...)``."""
    if not cpu.get("model"):
        return "CPU: unknown (no /proc/cpuinfo)"
    return (f"CPU: {cpu['model']} (family {cpu['family']}, model {cpu['model_number']}, {cpu['logical_cpus']} "
            f"logical CPUs; flags: {', '.join(cpu['flags'] or []) or 'none of ' + ', '.join(SPEED_FLAGS)})")
