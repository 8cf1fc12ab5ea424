"""Soak: the Gradio demo and the Triton server, both on 127.0.0.1, under mixed good and bad requests at once.

    .venv/bin/python demos/soak.py [ARTIFACT_DIR ...] --minutes 10 --concurrency 4 --out docs/results/soak.json

Starts ``gankd-demo`` (the Gradio app) and ``gankd-demo triton`` as their own processes, over the given SR
artifact folders (the first is the demo's teacher, the last its student; none: two tiny SRVGG x4 students built
here), then runs ``--concurrency`` client threads against each server for ``--warmup-s`` and then ``--minutes``:

- Good requests (``--good-share`` of them): real photo crops of mixed sizes. Demo: upload, ``/call/upscale`` with
  a random tile (0, 16, 32), both outputs downloaded and compared with ``Session.run`` of the same crop in this
  process (at most 1/255 apart, else a wrong output). Triton: HTTP or gRPC, batch 1 or 2, compared with
  ``Session.forward`` (at most 1e-4 apart). Every request's input differs from the others' by far more than the
  tolerances, so a mixed-up answer counts as wrong.
- Bad requests, each expected to be refused with its own words: demo: not an image, 1x1, over the pixel limit, a
  path the client did not upload, tile 1, an unknown model, a crafted path sent as ``application/vnd.x+json``, a
  ``text/plain`` body, invalid JSON; Triton: NaN, 1x1, H = 0, over the pixel limit, FP64, an unknown model.

It reports requests served, wrong outputs (must be 0), errors by kind (a good request that failed, a bad one that
was served or refused with other words), refusals by kind, latency of the good requests, the tracebacks in the
servers' logs (must be 0), and each server's RSS (its whole process tree: tritonserver and its model stubs too)
after the warm-up and at the end (growth must stay under 10%). The warm-up is the same load (the first requests
load the demo's sessions, concurrent batches grow ONNX Runtime's arenas once, and Gradio's per-session records
fill their bounds); every request is checked and counted, those of the warm-up too. Exit status 0 when all three
hold and no request failed otherwise. Every loop is bounded by the deadline and every request by
``REQUEST_TIMEOUT_S``; the servers are stopped (SIGTERM, then SIGKILL of their own process group) however the run
ends. The JSON (``--out``) holds all of it, with the RSS samples.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gankd.serve.cpu import cpu_description
from gankd.serve.timing import percentile, timed_ms
from gankd.serve.ports import free_port

MAX_PIXELS = 96 * 96  # both servers' --max-pixels: good crops are at most 48 x 48, "over the limit" is 97 x 96
SIZES = (16, 24, 32, 40, 48)  # crop sides: multiples of every pixel-unshuffle factor (1, 2, 4, 8)
DEMO_TILES = (0, 16, 32)
TILE_MAX_PX = 1024  # what the demo runs a tile of 0 as (gankd.serve.app.TILE_MAX_PX)
REQUEST_TIMEOUT_S = 120
START_TIMEOUT_S = 300
RSS_EVERY_S = 5.0
META = {"_type": "gradio.FileData"}
DEMO_BAD = {  # kind -> words its refusal must hold
    "not an image": "not an image",
    "1x1 image": "at least 8 px",
    "over the pixel limit": "over the limit",
    "a path it did not upload": "reads only files this client uploaded",
    "tile 1": "tile size",
    "unknown model": "unknown teacher model",
    "crafted path as application/vnd.x+json": "reads only files this client uploaded",
    "text/plain body": "request bodies must be JSON",
    "invalid JSON": "not valid JSON",
}
TRITON_BAD = {"NaN": "NaN", "1x1": "at least 8 px", "H = 0": "at least 8 px", "over the pixel limit": "over the limit",
              "FP64": "FP64", "unknown model": "no_such_model"}


# ----------------------------------------------------------------------------------------------- inputs


def build_artifacts(root: Path) -> list[Path]:
    """Two tiny SRVGG x4 students with different weights, exported to ONNX (as the tests build theirs)."""
    import torch

    from gankd.distill import ModelConfig, save_model
    from gankd.export import exporter

    config = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 16, "num_conv": 4, "upscale": 4}, task="sr",
                         scale=4)
    dirs = []
    for seed, name in ((0, "soak_teacher"), (1, "soak_student")):
        torch.manual_seed(seed)
        model = config.build()
        with torch.no_grad():
            model.body[-1].bias.add_(0.5)  # outputs around 0.5: the [0, 1] clamp hides nothing
        model_dir = save_model(root / "models" / name, model, config)
        exporter.export_model(model_dir, root / name, exporter.ExportSettings(formats=("onnx",), simplify=False),
                              log=lambda _msg: None)
        dirs.append(root / name)
    return dirs


def photo_crops(count: int, seed: int) -> list[np.ndarray]:
    """``count`` uint8 RGB crops of scikit-image's real photos, each of a random SIZES x SIZES shape."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        photo = photos[k % len(photos)]
        height, width = (int(v) for v in rng.choice(SIZES, 2))
        top, left = int(rng.integers(0, photo.shape[0] - height)), int(rng.integers(0, photo.shape[1] - width))
        crops.append(np.ascontiguousarray(photo[top:top + height, left:left + width, :3]))
    return crops


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class References:
    """What each good request must get back, from Sessions in this process: demo outputs per (crop, tile), made
    on first use; Triton outputs per (model, crop)."""

    def __init__(self, dirs: list[Path], crops: list[np.ndarray], triton_names: list[str]):
        from gankd.serve import Session

        self.crops = crops
        self.demo_sessions = (Session(dirs[0], backend="ort"), Session(dirs[-1], backend="ort"))
        self.tensors = [np.ascontiguousarray(c.transpose(2, 0, 1)[None], dtype=np.float32) / 255 for c in crops]
        self.triton = {(name, k): Session(d, backend="ort").forward(x)
                       for name, d in zip(triton_names, dirs) for k, x in enumerate(self.tensors)}
        self._demo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def demo(self, index: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if (index, tile) not in self._demo:
                self._demo[(index, tile)] = tuple(s.run(self.crops[index], tile=tile or TILE_MAX_PX)
                                                  for s in self.demo_sessions)
            return self._demo[(index, tile)]


# ----------------------------------------------------------------------------------------------- servers


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (tritonserver and its Python-backend stubs under the CLI), in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        total += _rss_kb(current)
    return total / 1024


class Server:
    """A gankd-demo process on loopback, its output in a log file; stopped by ``stop`` (SIGTERM, then SIGKILL of its
    own process group)."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log = name, log
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gankd.serve.cli", *args], stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready after {START_TIMEOUT_S} s: {self.tail()}")

    def tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid)

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback (most recent call last)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group start_new_session made: this server's own
                self.proc.wait()


# ----------------------------------------------------------------------------------------------- clients


class Stats:
    """Counters of the whole run, shared by the client threads."""

    def __init__(self):
        self.served, self.wrong, self.refused, self.errors = Counter(), Counter(), Counter(), Counter()
        self.error_examples: dict[str, str] = {}
        self.latency_ms: dict[str, list[float]] = {"demo": [], "triton": []}
        self._lock = threading.Lock()

    def good(self, target: str, correct: bool, latency_ms: float) -> None:
        with self._lock:
            (self.served if correct else self.wrong)[target] += 1
            self.latency_ms[target].append(latency_ms)

    def refusal(self, target: str, kind: str, refused: bool, message: str, words: str) -> None:
        if refused and words in message and "\n" not in message.strip():
            with self._lock:
                self.refused[f"{target}: {kind}"] += 1
        else:
            self.error(f"{target} bad '{kind}': " + ("refused with other words" if refused else "served"), message)

    def error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.error_examples.setdefault(kind, message[:300])


class DemoClient:
    """One browser-like client of the demo (its own cookie, so its own uploads) over Gradio's REST API."""

    def __init__(self, base: str, names: tuple[str, str], refs: References):
        import httpx

        self.base, self.names, self.refs = base, names, refs
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S)
        self.http.get(f"{base}/config").raise_for_status()

    def upload(self, content: bytes, name: str = "in.png") -> str:
        reply = self.http.post(f"{self.base}/gradio_api/upload", files={"files": (name, content)})
        reply.raise_for_status()
        return reply.json()[0]

    def call(self, data: list, content_type: str = "application/json", body: bytes | None = None):
        """("complete", outputs), ("error", message) or ("http", "<status> <text>")."""
        body = json.dumps({"data": data}).encode() if body is None else body
        reply = self.http.post(f"{self.base}/gradio_api/call/upscale", content=body,
                               headers={"content-type": content_type})
        if reply.status_code != 200:
            return "http", f"{reply.status_code} {reply.text}"
        text = self.http.get(f"{self.base}/gradio_api/call/upscale/{reply.json()['event_id']}").text
        events, payloads = re.findall(r"^event: (\w+)", text, re.M), re.findall(r"^data: (.*)$", text, re.M)
        if not events or not payloads:
            return "http", f"no event in {text[:200]!r}"
        payload = json.loads(payloads[-1])
        if events[-1] == "complete":
            return "complete", payload
        return "error", str(payload.get("error") if isinstance(payload, dict) else payload)

    def image(self, output: dict) -> np.ndarray:
        from PIL import Image

        url = output["url"] if output["url"].startswith("http") else self.base + output["url"]
        reply = self.http.get(url)
        reply.raise_for_status()
        return np.asarray(Image.open(io.BytesIO(reply.content)))

    def _demo_round_trip(self, index: int, tile: int):
        """Upload, call, download both outputs: what one user waits for."""
        path = self.upload(png_bytes(self.refs.crops[index]))
        status, result = self.call([{"path": path, "meta": META}, *self.names, "ort", tile])
        got = [self.image(result[0]), self.image(result[1])] if status == "complete" else None
        return status, result, got

    def good(self, rng: random.Random, stats: Stats) -> None:
        index, tile = rng.randrange(len(self.refs.crops)), rng.choice(DEMO_TILES)
        (status, result, got), latency_ms = timed_ms(self._demo_round_trip, index, tile)
        if status != "complete":
            return stats.error(f"demo good: {status}", str(result))
        expected = self.refs.demo(index, tile)
        stats.good("demo", all(g.shape == e.shape and np.abs(g.astype(int) - e).max() <= 1
                               for g, e in zip(got, expected)), latency_ms)

    def bad(self, kind: str, stats: Stats) -> None:
        photo = self.refs.crops[0]
        names, good_path = list(self.names), None
        if kind in ("tile 1", "unknown model"):
            good_path = self.upload(png_bytes(photo))
        data = {
            "not an image": lambda: [{"path": self.upload(b"not an image\n", "notes.png"), "meta": META}],
            "1x1 image": lambda: [{"path": self.upload(png_bytes(photo[:1, :1])), "meta": META}],
            "over the pixel limit": lambda: [{"path": self.upload(png_bytes(np.zeros((96, 97, 3), np.uint8))),
                                              "meta": META}],
            "a path it did not upload": lambda: [{"path": "/etc/passwd", "meta": META}],
            "crafted path as application/vnd.x+json": lambda: [{"path": "/etc/passwd", "meta": META}],
        }
        if kind in data:
            payload = [*data[kind](), *names, "ort", 16]
        elif kind == "tile 1":
            payload = [{"path": good_path, "meta": META}, *names, "ort", 1]
        elif kind == "unknown model":
            payload = [{"path": good_path, "meta": META}, "no_such_model", names[1], "ort", 16]
        else:
            payload = [None, *names, "ort", 16]
        content_type = {"crafted path as application/vnd.x+json": "application/vnd.x+json",
                        "text/plain body": "text/plain"}.get(kind, "application/json")
        body = b"{not json" if kind == "invalid JSON" else None
        status, message = self.call(payload, content_type, body)
        stats.refusal("demo", kind, status in ("error", "http"), str(message), DEMO_BAD[kind])

    def close(self) -> None:
        self.http.close()


class TritonClient:
    """One client of the Triton server, HTTP and gRPC (each thread its own: the HTTP client is gevent's)."""

    def __init__(self, endpoints: dict[str, str], names: list[str], refs: References):
        import tritonclient.grpc as grpc
        import tritonclient.http as http

        self.modules = {"http": http, "grpc": grpc}
        self.clients = {"http": http.InferenceServerClient(endpoints["http"], network_timeout=REQUEST_TIMEOUT_S),
                        "grpc": grpc.InferenceServerClient(endpoints["grpc"])}
        self.names, self.refs = names, refs

    def infer(self, protocol: str, model: str, x: np.ndarray, dtype: str = "FP32") -> np.ndarray:
        module = self.modules[protocol]
        feed = module.InferInput("input", list(x.shape), dtype)
        feed.set_data_from_numpy(x)
        kwargs = {"client_timeout": REQUEST_TIMEOUT_S} if protocol == "grpc" else {}
        return self.clients[protocol].infer(model, [feed], **kwargs).as_numpy("output")

    def good(self, rng: random.Random, stats: Stats) -> None:
        protocol, model = rng.choice(("http", "grpc")), rng.choice(self.names)
        first = rng.randrange(len(self.refs.tensors))
        same = [k for k, x in enumerate(self.refs.tensors) if x.shape == self.refs.tensors[first].shape]
        members = [first] + ([rng.choice(same)] if rng.random() < 0.3 else [])  # batch 1 or 2, one shape
        x = np.concatenate([self.refs.tensors[k] for k in members])
        expected = np.concatenate([self.refs.triton[(model, k)] for k in members])
        try:
            y, latency_ms = timed_ms(self.infer, protocol, model, x)
        except Exception as exc:  # noqa: BLE001 - counted by kind
            return stats.error(f"triton good ({protocol}): {type(exc).__name__}", str(exc))
        correct = y.shape == expected.shape and float(np.abs(y - expected).max()) <= 1e-4
        stats.good("triton", correct, latency_ms)

    def bad(self, kind: str, rng: random.Random, stats: Stats) -> None:
        from tritonclient.utils import InferenceServerException

        protocol, model, dtype = rng.choice(("http", "grpc")), rng.choice(self.names), "FP32"
        x = self.refs.tensors[0].copy()
        if kind == "NaN":
            x[0, 0, 0, 0] = np.nan
        elif kind == "1x1":
            x = np.zeros((1, 3, 1, 1), np.float32)
        elif kind == "H = 0":
            x = np.zeros((1, 3, 0, 16), np.float32)
        elif kind == "over the pixel limit":
            x = np.zeros((1, 3, 96, 104), np.float32)
        elif kind == "FP64":
            x, dtype = x.astype(np.float64), "FP64"
        elif kind == "unknown model":
            model = "no_such_model"
        try:
            self.infer(protocol, model, x, dtype)
        except InferenceServerException as exc:
            return stats.refusal("triton", kind, True, exc.message() or str(exc), TRITON_BAD[kind])
        except Exception as exc:  # noqa: BLE001 - a refusal the client could not read is an error
            return stats.error(f"triton bad '{kind}': {type(exc).__name__}", str(exc))
        stats.refusal("triton", kind, False, "served", TRITON_BAD[kind])

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def client_loop(make_client, bad_kinds: list[str], deadline: float, good_share: float, seed: int,
                stats: Stats) -> None:
    """Requests back to back until the deadline: good ones with probability ``good_share``, else a bad kind."""
    rng = random.Random(seed)
    try:
        client = make_client()
    except Exception as exc:  # noqa: BLE001 - the thread's client could not connect
        return stats.error(f"client start: {type(exc).__name__}", str(exc))
    try:
        while time.monotonic() < deadline:
            try:
                if rng.random() < good_share:
                    client.good(rng, stats)
                elif isinstance(client, TritonClient):
                    client.bad(rng.choice(bad_kinds), rng, stats)
                else:
                    client.bad(rng.choice(bad_kinds), stats)
            except Exception as exc:  # noqa: BLE001 - a transport failure: counted, and the loop goes on
                stats.error(f"{type(client).__name__}: {type(exc).__name__}", str(exc))
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------- the run


def cpu_model() -> str:
    return cpu_description()["model"] or "unknown CPU"


def _percentile(values: list[float], q: float) -> float | None:
    return round(percentile(sorted(values), q), 1) if values else None  # nearest rank, as gankd-bench


def soak(dirs: list[Path], minutes: float, concurrency: int, good_share: float, seed: int, warmup_s: float,
         work: Path) -> dict:
    import httpx

    from gankd.serve.triton import model_name

    names = [model_name(d) for d in dirs]
    if len(set(names)) < len(names):
        raise SystemExit("error: the artifact folders need distinct names (Triton model names)")
    demo_port, ports = free_port(), {k: free_port() for k in ("http", "grpc", "metrics")}
    demo = Server("the demo", ["serve", *map(str, dirs), "--host", "127.0.0.1", "--port", str(demo_port),
                               "--max-pixels", str(MAX_PIXELS)], work / "demo.log")
    triton = Server("the Triton server", ["triton", *map(str, dirs), "--host", "127.0.0.1",
                                          "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                                          "--metrics-port", str(ports["metrics"]), "--max-pixels", str(MAX_PIXELS)],
                    work / "triton.log")
    servers = {"demo": demo, "triton": triton}
    try:
        print(f"building the references and starting both servers (logs in {work})", flush=True)
        refs = References(dirs, photo_crops(16, seed), names)
        base = f"http://127.0.0.1:{demo_port}"
        endpoints = {"http": f"127.0.0.1:{ports['http']}", "grpc": f"127.0.0.1:{ports['grpc']}"}
        demo.wait_ready(lambda: httpx.get(f"{base}/config", timeout=5).status_code == 200)
        triton.wait_ready(lambda: _triton_ready(endpoints["http"], names))
        demo_names = (dirs[0].name, dirs[-1].name)
        first = Stats()  # one good request to each: a setup that cannot serve stops here, in one line
        for client in (DemoClient(base, demo_names, refs), TritonClient(endpoints, names, refs)):
            client.good(random.Random(seed), first)
            client.close()
        if first.errors or first.wrong:
            raise SystemExit(f"error: the first requests failed: {first.error_examples or dict(first.wrong)}")
        return _measure(servers, refs, base, endpoints, demo_names, names, minutes, concurrency, good_share, seed,
                        warmup_s)
    finally:
        for server in servers.values():
            server.stop()


def _triton_ready(url: str, names: list[str]) -> bool:
    import tritonclient.http as http

    with http.InferenceServerClient(url) as client:
        return all(client.is_model_ready(name) for name in names)


def _measure(servers, refs, base, endpoints, demo_names, names, minutes, concurrency, good_share, seed,
             warmup_s) -> dict:
    stats, rss = Stats(), {name: [] for name in servers}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.monotonic()
    deadline = started + warmup_s + minutes * 60
    done = threading.Event()

    def sample() -> None:  # (seconds into the run, MB) per server
        while True:
            for name, server in servers.items():
                rss[name].append((round(time.monotonic() - started, 1), round(server.rss_mb(), 1)))
            if done.wait(RSS_EVERY_S):
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = []
    clients = ((lambda: DemoClient(base, demo_names, refs), list(DEMO_BAD)),
               (lambda: TritonClient(endpoints, names, refs), list(TRITON_BAD)))
    for k in range(concurrency):
        for offset, (make_client, bad_kinds) in enumerate(clients):
            threads.append(threading.Thread(target=client_loop, args=(
                make_client, bad_kinds, deadline, good_share, seed * 1000 + offset * 500 + k, stats)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration_s = time.monotonic() - started
    done.set()
    sampler.join()
    for name, server in servers.items():
        rss[name].append((round(duration_s, 1), round(server.rss_mb(), 1)))
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "load_average_before": load_before, "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
        "minutes": minutes, "duration_s": round(duration_s, 1), "warmup_s": warmup_s,
        "concurrency_per_server": concurrency, "good_share": good_share, "models": names,
        "served": dict(stats.served), "wrong_outputs": dict(stats.wrong),
        "refused": dict(sorted(stats.refused.items())),
        "errors": dict(sorted(stats.errors.items())), "error_examples": stats.error_examples,
        "latency_ms": {t: {"p50": _percentile(v, 50), "p99": _percentile(v, 99)} for t, v in stats.latency_ms.items()},
        "tracebacks_in_logs": {name: server.tracebacks() for name, server in servers.items()},
        "rss_mb": {name: _rss_summary(samples, warmup_s) for name, samples in rss.items()},
    }


def _rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict:
    """RSS after the warm-up (the first sample at or past it) and at the end, the growth between them, the peak."""
    start = next((mb for t, mb in samples if t >= warmup_s), samples[-1][1])
    end = samples[-1][1]
    return {"after_startup": samples[0][1], "start": start, "end": end, "max": max(mb for _, mb in samples),
            "growth_pct": round(100 * (end - start) / start, 1), "samples": [list(s) for s in samples]}


def summary(result: dict) -> tuple[str, bool]:
    wrong = sum(result["wrong_outputs"].values())
    tracebacks = sum(result["tracebacks_in_logs"].values())
    growth_ok = all(r["growth_pct"] < 10 for r in result["rss_mb"].values())
    lines = [f"soak: {result['minutes']:g} min after a {result['warmup_s']:g} s warm-up ({result['duration_s']:.0f} s "
             f"in all), {result['concurrency_per_server']} clients per server, "
             f"{result['cpu']}; load average {' '.join(result['load_average_before'])} before, "
             f"{' '.join(result['load_average_after'])} after",
             f"served (good requests answered correctly): {result['served']}",
             f"wrong outputs: {wrong} (must be 0)",
             f"refused as expected: {sum(result['refused'].values())} ({result['refused']})",
             f"errors: {sum(result['errors'].values())} ({result['errors']})",
             f"latency of good requests, ms: {result['latency_ms']}",
             f"tracebacks in the server logs: {result['tracebacks_in_logs']} (must be 0)"]
    for name, r in result["rss_mb"].items():
        lines.append(f"RSS {name}: {r['after_startup']} MB at the start, {r['start']} MB after the warm-up "
                     f"({result['warmup_s']:g} s), {r['end']} MB at the end (max {r['max']}): {r['growth_pct']:+.1f}% "
                     "(must be under 10%)")
    ok = wrong == 0 and tracebacks == 0 and growth_ok and not result["errors"]
    return "\n".join(lines + [f"result: {'PASS' if ok else 'FAIL'}"]), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact_dirs", nargs="*", type=Path,
                        help="SR artifact folders (teacher first); none: two tiny students built here")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads per server")
    parser.add_argument("--good-share", type=float, default=0.7, help="share of good requests")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="the same load before --minutes; RSS growth is measured from its end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/soak.json"), help="where the JSON goes")
    args = parser.parse_args()
    if args.minutes <= 0 or args.warmup_s < 0 or args.concurrency < 1 or not 0 < args.good_share <= 1:
        parser.error("--minutes > 0, --warmup-s >= 0, --concurrency >= 1 and 0 < --good-share <= 1")
    work = Path(tempfile.mkdtemp(prefix="gankd-soak-"))
    dirs = args.artifact_dirs or build_artifacts(work / "artifacts")
    result = soak([d.resolve() for d in dirs], args.minutes, args.concurrency, args.good_share, args.seed,
                  args.warmup_s, work)
    result["artifacts"] = [str(d) for d in args.artifact_dirs] or ["two tiny SRVGG x4 students (num_feat 16, "
                                                                   "num_conv 4) built by demos/soak.py"]
    text, ok = summary(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept the servers' logs and the artifacts in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
