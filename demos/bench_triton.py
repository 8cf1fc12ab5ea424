"""Served vs in-process: the quickstart student through ``gankd-demo triton`` (tritonclient HTTP and gRPC, dynamic
batching on and off) against calling ``Session.forward`` directly, at several client concurrencies, in one run.

    .venv/bin/python demos/bench_triton.py exports/student --shape 1x3x64x64 --concurrency 1,4,16

Each row: ``concurrency`` client threads send the same real LR crop (scikit-image's astronaut, bicubic-downscaled)
back to back for ``--duration-s`` after one warm-up request each; latency is per request as the client sees it
(p50 / p99: nearest rank, as gankd-bench's), throughput is images per second over the row's wall time. Both
servers (batching on and off) run at once and the rows are measured in ``--rounds`` interleaved rounds (as
gankd-bench interleaves), so load from other jobs that drifts during the run falls on every row alike. "Session"
threads share one Session (ONNX Runtime), as the Triton model instance shares its one Session between the requests
of a batch. Batching off is ``--max-batch 1``. Both use ``--threads`` intra-op threads. The table ends with the CPU
model (/proc/cpuinfo) and the load average before and after, to show whether other jobs shared the machine.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

import numpy as np

from gankd.serve.cpu import cpu_description
from gankd.serve.timing import measure_interleaved, percentile, timed_ms
from gankd.serve.ports import free_port


def _join_all(threads) -> None:
    for thread in threads:
        thread.join()


def _cpu_model() -> str:
    return cpu_description()["model"] or "unknown CPU"


def _lr_crop(shape: tuple[int, int, int, int], scale: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    n, _, height, width = shape
    hr = data.astronaut()[40:40 + height * scale, 160:160 + width * scale]
    lr = Image.fromarray(hr).resize((width, height), Image.Resampling.BICUBIC)
    x = np.asarray(lr, dtype=np.float32).transpose(2, 0, 1)[None] / 255
    return np.ascontiguousarray(np.repeat(x, n, axis=0))


def _run(make_call, concurrency: int, duration_s: float) -> dict:
    """``concurrency`` threads, each with its own ``make_call()`` (a client), calling it back to back for
    ``duration_s`` from the moment all are ready (the one timing loop, ``gankd.serve.timing``)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            call = make_call()
            call()  # warm-up: connection, first batch
        except BaseException as exc:  # noqa: BLE001 - reported after the row
            errors.append(exc)
            barrier.wait()
            return
        barrier.wait()
        latencies[k] = measure_interleaved([call], warmup_ms=None, duration_s=duration_s, iterations=None)[0]
        getattr(call, "close", lambda: None)()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    wall = timed_ms(_join_all, threads)[1] / 1e3
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return {"latencies_ms": [v for per in latencies for v in per], "wall_s": wall}


def _triton_call(protocol: str, url: str, model: str, x: np.ndarray):
    def make():
        if protocol == "http":
            import tritonclient.http as module

            client = module.InferenceServerClient(url, network_timeout=120)
        else:
            import tritonclient.grpc as module

            client = module.InferenceServerClient(url)
        feed = module.InferInput("input", list(x.shape), "FP32")
        feed.set_data_from_numpy(x)

        def call():
            client.infer(model, [feed]).as_numpy("output")

        call.close = client.close  # an open HTTP connection would hold tritonserver's shutdown
        return call

    return make


def _mean_batch(url: str, model: str) -> float | None:
    import tritonclient.http as module

    with module.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    counts = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    executions = sum(counts.values())
    return sum(size * count for size, count in counts.items()) / executions if executions else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact_dir", nargs="?", default="exports/student")
    parser.add_argument("--shape", default="1x3x64x64", help="NxCxHxW of each request")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--duration-s", type=float, default=2.0, help="timed phase per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()

    from gankd.serve import Session
    from gankd.serve.triton import TritonServer, TritonSettings, model_name

    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    levels = [int(v) for v in args.concurrency.split(",")]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    session = Session(args.artifact_dir, backend="ort", threads=args.threads)
    x = _lr_crop(shape, session.scale)
    name = model_name(args.artifact_dir)
    servers = {}
    try:
        for batching, max_batch in (("on", args.max_batch), ("off", 1)):  # both up: rows interleave
            settings = TritonSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                      max_batch=max_batch, max_queue_delay_us=args.max_queue_delay_us,
                                      threads=args.threads, backend="ort", max_pixels=shape[2] * shape[3])
            servers[batching] = TritonServer([args.artifact_dir], settings).start()
        rows = {("Session (in process)", "-", level): (lambda: lambda: session.forward(x)) for level in levels}
        for batching, server in servers.items():
            for protocol in ("http", "grpc"):
                url = server.endpoints[protocol].removeprefix("http://")
                for level in levels:
                    rows[(f"Triton {protocol}", batching, level)] = _triton_call(protocol, url, name, x)
        runs = {key: [] for key in rows}
        for round_index in range(args.rounds):  # A B C ... A B C ...: load that drifts hits every row alike
            for key, make_call in rows.items():
                runs[key].append(_run(make_call, key[2], args.duration_s))
            print(f"round {round_index + 1} of {args.rounds} done", flush=True)
        mean_batch = {b: _mean_batch(s.endpoints["http"].removeprefix("http://"), name) for b, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    images = shape[0]
    print(f"\n{name}: {args.shape} per request, {args.rounds} interleaved rounds of {args.duration_s:g} s per row, "
          f"{args.threads} intra-op threads, max batch {args.max_batch}, queue delay {args.max_queue_delay_us} us; "
          f"mean executed batch size with batching on {mean_batch['on'] or 0:.2f}")
    print("| path | dynamic batching | concurrency | requests | p50 ms | p99 ms | images/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    throughput = {}
    for key, results in runs.items():
        path, batching, level = key
        latencies = sorted(v for r in results for v in r["latencies_ms"])
        per_s = len(latencies) * images / sum(r["wall_s"] for r in results)
        throughput[key] = per_s
        print(f"| {path} | {batching} | {level} | {len(latencies)} | {percentile(latencies, 50):.1f} | "
              f"{percentile(latencies, 99):.1f} | {per_s:.1f} |")
    print("\ngain from dynamic batching (images/s on / off):")
    for protocol in ("http", "grpc"):
        on_off = [(throughput[(f"Triton {protocol}", "on", lv)], throughput[(f"Triton {protocol}", "off", lv)])
                  for lv in levels]
        gains = [f"c={lv}: {on / off:.2f}x" for lv, (on, off) in zip(levels, on_off)]
        print(f"  {protocol}: " + ", ".join(gains))
    print(f"\nCPU: {_cpu_model()}, {os.cpu_count()} logical CPUs; load average before {' '.join(load_before)}, "
          f"after {' '.join(load_after)}")


if __name__ == "__main__":
    main()
