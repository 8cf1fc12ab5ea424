"""Session against gankd-bench on one artifact: does serve run as fast as the benchmark says, and how much does
``auto`` gain over ONNX Runtime?

    python demos/bench_serve.py exports/student --sizes 64,256 --iterations 10 [--threads 2]

For each size (1x3xSxS) it times, interleaved (A B A B ..., after one warm-up run each):

- ``bench <backend>``: the runner gankd-bench times (``gankd.export.bench``'s, for ort and ncnn when the artifact
  has them), called as gankd-bench calls it;
- ``session <backend>``: ``Session(..., backend=<backend>).forward`` on the same input (the raw network, as Triton
  calls it; ``run`` adds the reflect padding of ``pad`` px, so a 64x64 image runs the network on 84x84);
- ``session auto``: the backend ``auto`` chose here.

and prints the medians, session / bench per backend (the target: within 10%) and ORT / auto (the issue's
targets on the quickstart student: >= 2x at 64x64, >= 1.8x at 256x256). Not a test: a few seconds to minutes,
depending on the model; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--sizes", default="64,256", help="square input sizes, comma-separated")
    parser.add_argument("--iterations", type=int, default=10, help="timed rounds per size")
    parser.add_argument("--threads", type=int, default=None, help="threads of every runtime (default: theirs)")
    parser.add_argument("--json", type=Path, default=None, help="write the medians and ratios here")
    args = parser.parse_args(argv)

    from gankd.export import bench
    from gankd.serve import Session
    from gankd.serve.cli import backend_line
    from gankd.serve.timing import measure_interleaved

    artifact = bench.load_artifacts([args.artifact])[0]
    backends = [b for b in ("ort", "ncnn") if {"ort": "onnx", "ncnn": "ncnn"}[b] in artifact.manifest["files"]]
    threads = args.threads or bench.physical_cores()
    runners = bench._Runners(threads)  # the very runners gankd-bench times
    auto = Session(args.artifact, backend="auto", threads=args.threads)
    print(backend_line(auto))
    sessions = {b: Session(args.artifact, backend=b, threads=args.threads) for b in backends}
    cpuinfo = bench.read_cpuinfo()
    record = {"artifact": str(args.artifact), "auto": auto.backend, "threads": threads, "iterations": args.iterations,
              "cpu": bench.cpuinfo_blocks(cpuinfo)[0].get("model name") if cpuinfo else None, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        shape = (1, 3, size, size)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        calls = {}
        for b in backends:
            row = bench._rows_for(artifact, b, ("fp32",))[0]
            run = runners.make(row, shape)
            calls[f"bench {b}"] = lambda run=run, x=x: run(x)
            calls[f"session {b}"] = lambda s=sessions[b], x=x: s.forward(x)
        calls[f"session auto ({auto.backend})"] = lambda x=x: auto.forward(x)
        times = measure_interleaved(list(calls.values()), warmup_ms=0, duration_s=None, iterations=args.iterations)
        median = {name: statistics.median(t) for name, t in zip(calls, times)}
        print(f"\n1x3x{size}x{size}, {args.iterations} rounds, {threads} threads:")
        for name, value in median.items():
            print(f"  {name:<24} {value:9.2f} ms")
        for b in backends:
            print(f"  session / bench {b:<8} {median[f'session {b}'] / median[f'bench {b}']:9.3f}")
        ratios = {f"session / bench {b}": median[f"session {b}"] / median[f"bench {b}"] for b in backends}
        if "ort" in backends:
            gain = median["session ort"] / median[f"session auto ({auto.backend})"]
            print(f"  ort / auto ({auto.backend}){'':<6} {gain:9.2f}x")
            ratios["ort / auto"] = gain
        record["sizes"][str(size)] = {"median_ms": median, **ratios}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
