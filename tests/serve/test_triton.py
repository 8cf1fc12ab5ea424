"""``gankd-demo triton`` and ``gankd-export --triton-repo`` on tiny exported SR students, over loopback only.

One Triton server (PyTriton's tritonserver, Python-backend models over ``Session``) serves two artifacts for the
module; ``tritonclient`` HTTP and gRPC outputs are compared with ``Session.forward``; 200 requests from 16 threads
with mixed images and two sizes are each checked against their own input's output; the statistics endpoint shows
batches larger than 1; each bad input gets a one-line Triton error and the next request is answered; the CLI prints
its endpoints and SIGTERM lets an in-flight request finish and exits 0. The exported model repository is parsed
with Triton's model-configuration schema (``tritonclient``'s protobuf)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")

import tritonclient.grpc as triton_grpc  # noqa: E402
import tritonclient.http as triton_http  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from gankd.distill import ModelConfig, save_model  # noqa: E402
from gankd.distill.errors import GankdError  # noqa: E402
from gankd.export.cli import export_main  # noqa: E402
from gankd.export.triton_repo import check_model, parse_config, write_triton_model  # noqa: E402
from gankd.serve import ServeError, Session  # noqa: E402
from gankd.serve import triton as serve_triton  # noqa: E402
from gankd.serve.cli import main as demo_main  # noqa: E402
from gankd.serve.images import MIN_SIDE_PX, check_size  # noqa: E402
from gankd.serve.triton import BatchRunner, TritonServer, TritonSettings, config_pbtxt  # noqa: E402
from gankd.serve.ports import free_port

SRVGG_X4 = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, task="sr", scale=4)
MAX_PIXELS = 48 * 48  # the server's limit here: a 64x64 request is over it
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_thread")]


def _settings(**changes) -> TritonSettings:
    return TritonSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), threads=1,
                          max_pixels=MAX_PIXELS, **changes)


@pytest.fixture(scope="module")
def artifacts(shared_artifacts, tmp_path_factory):
    """The shared x4 SRVGG (onnx + pt2: the torch backend's runner test) and x2 RRDB, copied to folders named as the
    server names its models."""
    copies = shared_artifacts.copies(tmp_path_factory.mktemp("triton"), {"srvgg4": "sr", "rrdb2": "sr_x2"})
    return {name: art for name, (_, art) in copies.items()}


@pytest.fixture(scope="module")
def server(artifacts):
    # a 20 ms queue delay: 16 concurrent clients fill batches on a loaded 2-core machine
    with TritonServer([artifacts["srvgg4"], artifacts["rrdb2"]], _settings(max_queue_delay_us=20_000)) as running:
        yield running


@pytest.fixture(scope="module")
def sessions(artifacts):
    return {name: Session(path, backend="ort", threads=1) for name, path in artifacts.items()}


def _images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, height, width), dtype=np.float32) for _ in range(count)]


def _infer(client, module, model: str, x: np.ndarray, dtype: str = "FP32", name: str = "input") -> np.ndarray:
    feed = module.InferInput(name, list(x.shape), dtype)
    feed.set_data_from_numpy(x)
    return client.infer(model, [feed]).as_numpy("output")


@contextlib.contextmanager
def _clients(server):
    http = triton_http.InferenceServerClient(server.endpoints["http"].removeprefix("http://"), network_timeout=60)
    grpc = triton_grpc.InferenceServerClient(server.endpoints["grpc"])
    try:
        yield {"http": (http, triton_http), "grpc": (grpc, triton_grpc)}
    finally:
        http.close()
        grpc.close()


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.slow
def test_http_and_grpc_outputs_match_the_session(server, sessions):
    with _clients(server) as clients:
        for name, (height, width) in (("srvgg4", (16, 12)), ("rrdb2", (20, 14))):
            for protocol, (client, module) in clients.items():
                x = _images(1, height, width, seed=len(protocol))[0]
                x2 = np.concatenate([x, _images(1, height, width, seed=9)[0]])  # a request with batch 2
                for batch in (x, x2):
                    y = _infer(client, module, name, batch)
                    ref = sessions[name].forward(batch)
                    assert y.shape == ref.shape == (len(batch), 3, height * sessions[name].scale,
                                                    width * sessions[name].scale)
                    assert np.abs(y - ref).max() <= 1e-5, (name, protocol)
                    assert ref.std() > 0.01
                # negative control: another input's output is far outside the tolerance
                other = sessions[name].forward(_images(1, height, width, seed=99)[0])
                assert np.abs(_infer(client, module, name, x) - other).max() > 1e-2


@pytest.mark.slow
def test_concurrent_mixed_requests_each_get_their_own_output(server, sessions):
    images = _images(10, 16, 16, seed=1) + _images(10, 24, 20, seed=2)  # two sizes, mixed in the stream
    expected = [sessions["srvgg4"].forward(x) for x in images]
    # negative control: every output differs from every other same-size output, so a mix-up would be caught
    for i, a in enumerate(expected):
        for b in expected[i + 1:]:
            assert a.shape != b.shape or np.abs(a - b).max() > 1e-2
    local = threading.local()

    def one(k: int):
        if not hasattr(local, "client"):  # a client per thread, HTTP or gRPC
            protocol = "http" if threading.get_ident() % 2 else "grpc"
            module = triton_http if protocol == "http" else triton_grpc
            url = server.endpoints[protocol].removeprefix("http://")
            local.client, local.module = module.InferenceServerClient(url), module
        index = (k * 7) % len(images)
        return index, _infer(local.client, local.module, "srvgg4", images[index])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200
    for index, y in results:
        assert y.shape == expected[index].shape
        assert np.abs(y - expected[index]).max() <= 1e-5, index


@pytest.mark.slow
def test_the_statistics_show_dynamic_batches(server, sessions):
    x = _images(1, 16, 16, seed=3)[0]
    url = server.endpoints["http"].removeprefix("http://")

    def one(barrier):
        with triton_http.InferenceServerClient(url) as own:
            barrier.wait()
            return _infer(own, triton_http, "srvgg4", x)

    with triton_http.InferenceServerClient(url) as client:
        for _burst in range(3):  # 16 simultaneous requests; a burst that a stalled machine serialises is retried
            before = _batch_counts(client)
            barrier = threading.Barrier(16)
            with ThreadPoolExecutor(16) as pool:
                outputs = list(pool.map(one, [barrier] * 16))
            after = _batch_counts(client)
            grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
            assert all(np.abs(y - sessions["srvgg4"].forward(x)).max() <= 1e-5 for y in outputs)
            assert sum(size * count for size, count in grown.items()) == 16  # every request ran exactly once
            if any(size > 1 and count > 0 for size, count in grown.items()):
                break
        stats = client.get_inference_statistics("srvgg4")["model_stats"][0]
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown
    assert int(stats["execution_count"]) < int(stats["inference_count"])


def _batch_counts(client) -> dict[int, int]:
    stats = client.get_inference_statistics("srvgg4")["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


# ----------------------------------------------------------------------------------------------- bad input


def _size_line(model: str, width: int, height: int) -> str:
    """What every front end says of an image outside the limits (``images.check_size``), after the model's name."""
    with pytest.raises(ServeError) as info:
        check_size(width, height, MAX_PIXELS)
    return f"{model}: {info.value}"


BAD_INPUTS = [
    ("wrong dtype", "srvgg4", lambda: _images(1, 16, 16, 0)[0].astype(np.float64), "FP64", "FP64"),
    ("wrong rank", "srvgg4", lambda: np.zeros((1, 3, 16), np.float32), "FP32", "unexpected shape"),
    ("wrong channels", "srvgg4", lambda: np.zeros((1, 4, 16, 16), np.float32), "FP32", "unexpected shape"),
    ("over the size limit", "srvgg4", lambda: np.zeros((1, 3, 64, 64), np.float32), "FP32",
     f"over the limit of {MAX_PIXELS}"),
    # the same minimum as the demo, upscale and Session, in their words (ONNX Runtime's Conv text before)
    ("1x1", "srvgg4", lambda: np.zeros((1, 3, 1, 1), np.float32), "FP32", _size_line("srvgg4", 1, 1)),
    ("H = 0", "srvgg4", lambda: np.zeros((1, 3, 0, 16), np.float32), "FP32", _size_line("srvgg4", 16, 0)),
    ("W = 0 on the x2 model", "rrdb2", lambda: np.zeros((1, 3, 16, 0), np.float32), "FP32",
     _size_line("rrdb2", 0, 16)),
    ("7 px high", "srvgg4", lambda: np.zeros((1, 3, 7, 16), np.float32), "FP32", _size_line("srvgg4", 16, 7)),
    ("one pixel over", "srvgg4", lambda: np.zeros((1, 3, 48, 49), np.float32), "FP32", _size_line("srvgg4", 49, 48)),
    ("NaN", "srvgg4", lambda: np.full((1, 3, 16, 16), np.nan, np.float32), "FP32", "NaN"),
    ("odd size for x2 unshuffle", "rrdb2", lambda: np.zeros((1, 3, 15, 16), np.float32), "FP32", "multiples of 2"),
    ("unknown model", "no_such_model", lambda: np.zeros((1, 3, 16, 16), np.float32), "FP32", "no_such_model"),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.slow
def test_bad_inputs_get_one_line_errors_and_the_server_keeps_serving(server, sessions, protocol):
    good = _images(1, 16, 16, seed=5)[0]
    with _clients(server) as clients:
        client, module = clients[protocol]
        for case, model, make, dtype, words in BAD_INPUTS:
            with pytest.raises(InferenceServerException) as info:
                _infer(client, module, model, make(), dtype)
            message = info.value.message()
            assert words in message and "\n" not in message.strip(), (case, message)
            assert np.abs(_infer(client, module, "srvgg4", good) - sessions["srvgg4"].forward(good)).max() <= 1e-5


def test_a_bad_request_fails_alone_in_its_batch(artifacts, sessions):
    """BatchRunner: a batch of four requests (two sizes, one NaN) -> the NaN one gets its error, the others their own
    outputs, and no forward call mixes sizes."""
    runner = BatchRunner.open(artifacts["srvgg4"], backend="ort", threads=1)
    calls = []
    forward = runner.session.forward
    runner.session.forward = lambda *xs: calls.append(xs[0].shape) or forward(*xs)
    a, b = _images(2, 16, 16, seed=6)
    c = _images(1, 12, 20, seed=7)[0]
    nan = a.copy()
    nan[0, 1, 2, 3] = np.nan
    results = runner.run([{"input": a}, {"input": nan}, {"input": c}, {"input": b}])
    assert isinstance(results[1], ServeError) and "NaN" in str(results[1])
    for got, x in zip((results[0], results[2], results[3]), (a, c, b)):
        assert np.abs(got - sessions["srvgg4"].forward(x)).max() <= 1e-5
    assert sorted(calls) == [(1, 3, 12, 20), (2, 3, 16, 16)]  # one call per size, the NaN request in neither


def test_the_batch_runner_and_the_session_share_the_size_limits(artifacts):
    """Without the server: each request outside the limits gets the check's line; the Session under the runner has
    the same limit and says the same (its forward is checked too)."""
    runner = BatchRunner.open(artifacts["srvgg4"], backend="ort", threads=1, max_pixels=MAX_PIXELS)
    assert runner.session.max_pixels == MAX_PIXELS
    shapes = [(1, 1), (0, 16), (16, 0), (MIN_SIDE_PX - 1, 16), (48, 49)]  # (H, W)
    results = runner.run([{"input": np.zeros((1, 3, h, w), np.float32)} for h, w in shapes])
    for (height, width), result in zip(shapes, results):
        assert str(result) == _size_line("srvgg4", width, height)
        with pytest.raises(ServeError) as info:
            runner.session.forward(np.zeros((1, 3, height, width), np.float32))
        assert f"srvgg4: {info.value}" == _size_line("srvgg4", width, height)
    assert runner.run([{"input": np.zeros((1, 3, 8, 8), np.float32)}])[0].shape == (1, 3, 32, 32)


def test_the_torch_backend_runs_batches_too(artifacts, sessions):
    runner = BatchRunner.open(artifacts["srvgg4"], backend="torch", threads=1)
    assert runner.session.backend == "torch"
    a, b = _images(2, 16, 12, seed=10)
    results = runner.run([{"input": a}, {"input": b}])
    for got, x in zip(results, (a, b)):
        assert np.abs(got - sessions["srvgg4"].forward(x)).max() <= 1e-4  # ORT vs torch.export: the export tolerance


class _FakeSession:
    """What BatchRunner uses of a Session: the manifest and forward (here z * psi summed, to check the order)."""

    def __init__(self, inputs, outputs):
        self.manifest = {"task": "generate", "inputs": inputs, "outputs": outputs}
        self.calls = []

    def forward(self, *xs):
        self.calls.append(tuple(x.shape for x in xs))
        z, psi = xs
        return np.broadcast_to((z * psi[:, None]).sum(1)[:, None, None, None], (len(z), 3, 4, 4)).copy()


def test_per_sample_inputs_of_generate_models():
    z_spec = {"name": "z", "shape": ["N", 8], "dtype": "float32", "range": None}
    psi_spec = {"name": "psi", "shape": ["N"], "dtype": "float32", "range": [0.0, 1.0]}
    image = {"name": "image", "shape": ["N", 3, 4, 4], "dtype": "float32", "range": [-1.0, 1.0]}
    session = _FakeSession([z_spec, psi_spec], [image])
    runner = BatchRunner(session, "sg2")
    assert runner.input_names == ("z", "psi") and runner.output_name == "image"
    z = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
    good = [{"z": z[:2], "psi": np.array([[0.5], [1.0]], np.float32)},  # [N, 1] as clients send it
            {"z": z[2:], "psi": np.array([0.7], np.float32)}]  # [N] as Triton gives it after the reshape
    bad = [{"z": z[:1], "psi": np.array([[1.5]], np.float32)},
           {"z": z[:1]},
           {"z": z[:2], "psi": np.array([0.5], np.float32)},
           {"z": z[:1, :4], "psi": np.array([0.5], np.float32)},
           {"z": z[:1], "psi": np.array([[0.5, 0.5]], np.float32)},
           {"z": z[:1], "psi": np.array(0.5, np.float32)}]
    results = runner.run(good + bad)
    assert np.allclose(results[0][:, 0, 0, 0], [(z[0] * 0.5).sum(), z[1].sum()], atol=1e-5)
    assert np.allclose(results[1][:, 0, 0, 0], [(z[2] * 0.7).sum()], atol=1e-5)
    assert session.calls == [((3, 8), (3,))]  # both good requests in one call
    messages = [str(r) for r in results[2:]]
    assert len(messages) == 6
    for message, words in zip(messages, ("takes values in [0, 1], got 1.5", "no input 'psi'",
                                         "different batch sizes", "must be [N, 8], got [1, 4]",
                                         "'psi' must be [N, 1], got [1, 2]", "'psi' must be [N, 1], got []")):
        assert words in message and "\n" not in message, message


# ----------------------------------------------------------------------------------------------- library path


def test_stub_environment_puts_this_interpreters_lib_first(monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere/else")
    libdir = serve_triton.python_library_dir()
    with serve_triton.stub_environment():
        inside = os.environ["LD_LIBRARY_PATH"]
    assert os.environ["LD_LIBRARY_PATH"] == "/somewhere/else"
    if libdir is None:
        assert inside == "/somewhere/else"
    else:
        assert libdir == Path(sysconfig.get_config_var("LIBDIR"))
        assert inside.split(os.pathsep) == [str(libdir), "/somewhere/else"]


def _stub_libpythons(server: TritonServer) -> set[str]:
    """The libpython files mapped by the Python-backend stub processes of ``server`` (found by its repository path
    on their command lines)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" not in cmdline or str(server._root) not in cmdline:
                continue
            found |= {line.split()[-1] for line in (proc / "maps").read_text().splitlines() if "libpython" in line}
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.slow
def test_the_stubs_load_this_interpreters_libpython(server):
    libdir = serve_triton.python_library_dir()
    if libdir is None:
        pytest.skip("this interpreter has no shared libpython: the stubs use the system's")
    mapped = _stub_libpythons(server)
    assert mapped and all(Path(path).parent == libdir for path in mapped), mapped


SYSTEM_LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


@pytest.mark.skipif(not list(SYSTEM_LIBDIR.glob(f"libpython{sys.version_info.major}.{sys.version_info.minor}.so*"))
                    or serve_triton.python_library_dir() in (None, SYSTEM_LIBDIR),
                    reason="needs a system libpython of this version and an interpreter built elsewhere (pyenv)")
@pytest.mark.slow
def test_without_the_library_path_fix_the_stubs_load_the_system_libpython(artifacts, monkeypatch):
    """The negative control of the fix: without it the stub maps the system's libpython next to this interpreter's
    standard library (the mismatch that fails PyTriton's own models with RLock._recursion_count)."""
    monkeypatch.setattr(serve_triton, "stub_environment", contextlib.nullcontext)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with TritonServer([artifacts["srvgg4"]], _settings()) as unfixed:
        mapped = _stub_libpythons(unfixed)
    assert mapped and all(Path(path).parent == SYSTEM_LIBDIR for path in mapped), mapped


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_prints_endpoints_and_sigterm_lets_in_flight_requests_finish(artifacts, sessions):
    settings = _settings()
    exe = shutil.which("gankd-demo", path=str(BIN))
    # a 2 s queue delay holds the request in the batcher when SIGTERM comes
    proc = subprocess.Popen([exe, "triton", str(artifacts["srvgg4"]), "--http-port", str(settings.http_port),
                             "--grpc-port", str(settings.grpc_port), "--metrics-port", str(settings.metrics_port),
                             "--max-queue-delay-us", "2000000", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(line.lstrip().startswith("metrics") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"http://127.0.0.1:{settings.http_port}" in line for line in lines), lines
        assert any(f"127.0.0.1:{settings.grpc_port}" in line for line in lines)
        assert any(f"http://127.0.0.1:{settings.metrics_port}/metrics" in line for line in lines)
        url = f"127.0.0.1:{settings.http_port}"
        with triton_http.InferenceServerClient(url) as client:
            assert client.is_model_ready("srvgg4")
        x = _images(1, 16, 16, seed=8)[0]

        def request():  # an HTTP client belongs to the thread that made it (gevent)
            with triton_http.InferenceServerClient(url, network_timeout=60) as own:
                return _infer(own, triton_http, "srvgg4", x)

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(request)
            deadline = time.monotonic() + 30
            while _pending_requests(settings.metrics_port) < 1:  # Triton's live gauge: the request is queued
                assert time.monotonic() < deadline and not pending.done()
                time.sleep(0.05)
            assert not pending.done()
            proc.send_signal(signal.SIGTERM)
            y = pending.result(timeout=60)
        assert np.abs(y - sessions["srvgg4"].forward(x)).max() <= 1e-5
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for port in (settings.http_port, settings.grpc_port, settings.metrics_port):
        serve_triton.check_port_free("127.0.0.1", port, "--port")  # the server is gone


def _pending_requests(metrics_port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("nv_inference_pending_request_count{"))


def test_cli_errors_are_one_line(artifacts, tmp_path, capsys):
    bad = tmp_path / "bad name"
    shutil.copytree(artifacts["srvgg4"], bad)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, words in (([str(bad)], "Triton model names"),
                            ([str(artifacts["srvgg4"]), str(artifacts["srvgg4"])], "unique"),
                            ([str(artifacts["srvgg4"]), "--http-port", str(port)],
                             f"port {port} on 127.0.0.1 is in use"),
                            ([str(artifacts["srvgg4"]), "--grpc-port", "8000"], "must differ")):
            assert demo_main(["triton", *args]) == 2
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1, (args, err)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # a model that fails to load in Triton
        assert demo_main(["triton", str(artifacts["rrdb2"]), "--backend", "ort-cuda", "--http-port", str(free_port()),
                          "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]) == 2
        err = capsys.readouterr().err
        assert "could not load 'rrdb2': ServeError: the ort-cuda backend needs onnxruntime-gpu" in err, err
        assert err.count("\n") == 1
    exe = shutil.which("gankd-demo", path=str(BIN))  # the console script, as users run it
    proc = subprocess.run([exe, "triton", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and proc.stderr.count("\n") == 1
    assert "--max-queue-delay-us" in subprocess.run([exe, "triton", "--help"], capture_output=True, text=True,
                                                   timeout=60).stdout


# ----------------------------------------------------------------------------------------------- the repository


def test_triton_repo_is_a_valid_model_repository(artifacts, tmp_path):
    repo = tmp_path / "repo"
    model = write_triton_model(artifacts["rrdb2"], repo, max_batch=4, instances=2)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == ["rrdb2", "rrdb2/1", "rrdb2/1/model.onnx",
                                                                          "rrdb2/config.pbtxt"]
    assert (model / "1" / "model.onnx").read_bytes() == (artifacts["rrdb2"] / "model.onnx").read_bytes()
    config = check_model(model)
    assert (config.name, config.platform, config.max_batch_size) == ("rrdb2", "onnxruntime_onnx", 4)
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("output", [3, -1, -1])]
    assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
    assert config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]  # KIND_CPU
    with pytest.raises(GankdError, match="already exists"):
        write_triton_model(artifacts["rrdb2"], repo)
    write_triton_model(artifacts["rrdb2"], repo, force=True)

    # negative controls: the schema and the layout checks refuse what Triton would
    text = (model / "config.pbtxt").read_text()
    (model / "config.pbtxt").write_text(text.replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(GankdError, match="not a valid Triton model config"):
        check_model(model)
    (model / "config.pbtxt").write_text(text.replace("KIND_CPU", "KIND_TPU"))
    with pytest.raises(GankdError, match="not a valid Triton model config"):
        check_model(model)
    (model / "config.pbtxt").write_text(text.replace('name: "rrdb2"', 'name: "other"'))
    with pytest.raises(GankdError, match="not the folder's name"):
        check_model(model)
    (model / "config.pbtxt").write_text(text)
    (model / "1" / "model.onnx").unlink()
    with pytest.raises(GankdError, match="lacks model.onnx"):
        check_model(model)


def test_configs_of_generate_and_face_sr_parse_with_the_schema(tmp_path):
    z = {"name": "z", "shape": ["N", 32], "dtype": "float32"}
    psi = {"name": "psi", "shape": ["N"], "dtype": "float32", "range": [0.0, 1.0]}
    image = {"name": "image", "shape": ["N", 3, 32, 32], "dtype": "float32"}
    scale = {"name": "scale", "shape": ["N"], "dtype": "float32", "range": [4.0, 64.0]}
    restored = {"name": "restored", "shape": ["N", 3, 32, 32], "dtype": "float32"}
    for name, manifest, expected in (
            ("sg2", {"inputs": [z, psi], "outputs": [image]}, {"z": [32], "psi": [1], "image": [3, 32, 32]}),
            ("gcfsr", {"inputs": [image, scale], "outputs": [restored]},
             {"image": [3, 32, 32], "scale": [1], "restored": [3, 32, 32]})):
        path = tmp_path / name / "config.pbtxt"
        path.parent.mkdir()
        path.write_text(config_pbtxt(name, manifest, max_batch=8, max_queue_delay_us=100, instances=1,
                                     platform="onnxruntime_onnx"))
        config = parse_config(path)
        assert {t.name: list(t.dims) for t in [*config.input, *config.output]} == expected
        scalars = [t.name for t in config.input if t.HasField("reshape")]
        assert scalars == [n for n in ("psi", "scale") if n in expected]
        assert all(list(t.reshape.shape) == [] for t in config.input if t.HasField("reshape"))
    with pytest.raises(ServeError, match="float32 only"):
        config_pbtxt("x", {"inputs": [{**z, "dtype": "float16"}], "outputs": [image]}, max_batch=1,
                     max_queue_delay_us=0, instances=1, platform="onnxruntime_onnx")


def test_gankd_export_writes_the_repository(tmp_path, capsys):
    torch.manual_seed(0)
    model_dir = save_model(tmp_path / "student", SRVGG_X4.build(), SRVGG_X4)
    repo = tmp_path / "repo"
    assert export_main([str(model_dir), "--out", str(tmp_path / "x4"), "--formats", "pt2",
                        "--triton-repo", str(repo)]) == 2
    assert "add onnx to --formats" in capsys.readouterr().err
    assert not (tmp_path / "x4").exists()  # refused before exporting
    assert export_main([str(model_dir), "--out", str(tmp_path / "x4"), "--formats", "onnx",
                        "--triton-repo", str(repo)]) == 0
    assert "wrote Triton model" in capsys.readouterr().out
    config = check_model(repo / "x4")
    assert config.platform == "onnxruntime_onnx" and json.loads((tmp_path / "x4" / "manifest.json").read_text())
