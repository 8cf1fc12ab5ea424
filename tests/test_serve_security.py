"""Serving that cannot be turned against its host (issue 14), through real clients on 127.0.0.1 and the real CLI.

- File access: crafted file payloads (absolute paths with and without Gradio's ``meta``, a missing file, ``..``, a
  symlink in Gradio's upload folder, a URL, another client's upload) are refused with one line that does not
  depend on whether the file exists; ``/file=`` does not hand out another client's upload or proxy URLs.
- Pictures: a 16-bit grayscale PNG is not white and an EXIF-rotated photo comes back upright, in the demo.
- Work: the tile size has a floor and a ceiling, a request stops at its time budget, the queue is bounded.
- Artifacts: a manifest of another format_version and a model file changed after export are refused (``--no-verify``
  lets the latter through); a busy port is one line.
- Logs: one line per refused request, with the id the client was told, and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gankd.distill import ModelConfig, save_model
from gankd.export import exporter
from gankd.serve import OverBudget, ServeError, Session
from gankd.serve.app import QUEUE_SIZE, TILE_MAX_PX, TILE_MIN_PX, build_app
from gankd.serve.cli import main as demo_main
from gankd.serve.guard import REFUSED

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

MODEL = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, task="sr", scale=4)
TIMEOUT_S = 60
BIN = Path(sys.executable).parent
META = {"_type": "gradio.FileData"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Two tiny SR artifacts with different weights (so the student's PSNR to the teacher is finite), ONNX only."""
    root = tmp_path_factory.mktemp("secure")
    dirs = []
    for seed, name in ((0, "teacher"), (1, "student")):
        torch.manual_seed(seed)
        model = MODEL.build()
        with torch.no_grad():
            model.body[-1].bias.add_(0.5)
        model_dir = save_model(root / "models" / name, model, MODEL)
        exporter.export_model(model_dir, root / name, exporter.ExportSettings(formats=("onnx",), simplify=False),
                              log=lambda _msg: None)
        dirs.append(root / name)
    return dirs


@pytest.fixture(scope="module")
def server(artifacts):
    demo = build_app(artifacts, max_pixels=64 * 64, default_tile=16)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


class RestClient:
    """A client of Gradio's documented REST API (upload, /call) that keeps cookies, as a browser does."""

    def __init__(self, base: str):
        self.base = base
        self.http = httpx.Client(timeout=TIMEOUT_S)
        self.http.get(f"{base}/config").raise_for_status()

    def upload(self, path: Path) -> str:
        with open(path, "rb") as handle:
            reply = self.http.post(f"{self.base}/gradio_api/upload", files={"files": (path.name, handle)})
        reply.raise_for_status()
        return reply.json()[0]

    def upscale(self, payload, tile=16) -> tuple[str, object]:
        """("complete", outputs) or ("error", message)."""
        reply = self.http.post(f"{self.base}/gradio_api/call/upscale",
                               json={"data": [payload, "teacher", "student", "auto", tile]})
        reply.raise_for_status()
        event_id = reply.json()["event_id"]
        text = self.http.get(f"{self.base}/gradio_api/call/upscale/{event_id}").text
        event = re.findall(r"^event: (\w+)", text, re.M)[-1]
        data = json.loads(re.findall(r"^data: (.*)$", text, re.M)[-1])
        return event, (data.get("error") if isinstance(data, dict) else data)

    def close(self):
        self.http.close()


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _photo(size: int = 20, seed: int = 0) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[60 + seed:60 + seed + size, 180:180 + size])


def _request_ids(records) -> list[str]:
    return [re.search(r"request (\w+) refused", r.getMessage()).group(1) for r in records
            if r.name == "gankd.serve" and "refused" in r.getMessage()]


# ----------------------------------------------------------------------------------------------- file access


def test_paths_a_client_did_not_upload_are_refused_alike(server, tmp_path, caplog, capfd):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = _save(_photo(), secret_dir / "run_sample.png")  # an image on the server, never uploaded
    own, other = RestClient(server), RestClient(server)
    link = None
    try:
        own_path = own.upload(_save(_photo(seed=3), tmp_path / "mine.png"))
        others_path = other.upload(_save(_photo(seed=5), tmp_path / "theirs.png"))
        # a symlink inside Gradio's upload folder (shared by runs: a fresh name), pointing out of it
        link = Path(own_path).parent / f"link-{os.getpid()}-{tmp_path.name}.png"
        os.symlink(secret, link)
        crafted = {
            "absolute, with meta": {"path": str(secret), "meta": META},
            "absolute, no meta": {"path": str(secret)},
            "missing file": {"path": str(secret_dir / "nothing_here.png"), "meta": META},
            "passwd": {"path": "/etc/passwd"},
            "dot-dot": {"path": str(Path(own_path).parent) + "/.." * len(Path(own_path).parent.parts) + str(secret),
                        "meta": META},
            "symlink in the upload folder": {"path": str(link), "meta": META},
            "another client's upload": {"path": others_path, "meta": META},
            "another client's upload, no meta": {"path": others_path},
            "a URL": {"path": f"{server}/config", "meta": META},
        }
        caplog.set_level(logging.WARNING, logger="gankd.serve")
        capfd.readouterr()
        messages = {}
        for case, payload in crafted.items():
            event, message = own.upscale(payload)
            assert event == "error", (case, message)
            messages[case] = message
        for case, message in messages.items():
            assert message.startswith(f"Cannot use this upload: {REFUSED}. (request "), (case, message)
            assert "\n" not in message and str(secret_dir) not in message and "passwd" not in message
        # one log line per refused request, with the id the client was told; no traceback anywhere
        ids = _request_ids(caplog.records)
        assert sorted(ids) == sorted(re.search(r"request (\w+)\)", m).group(1) for m in messages.values())
        assert "Traceback" not in capfd.readouterr().err

        # gradio_client sends a dict without meta as it is: the audit's original payload
        client = gradio_client.Client(server + "/", verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
        with pytest.raises(Exception, match=re.escape(REFUSED)):
            client.predict({"path": str(secret)}, "teacher", "student", "auto", 16, api_name="/upscale")

        # /file= hands out no other client's upload and proxies no URL; the owner still gets its own
        assert own.http.get(f"{server}/gradio_api/file={others_path}").status_code == 403
        assert other.http.get(f"{server}/gradio_api/file={others_path}").status_code == 200
        assert own.http.get(f"{server}/gradio_api/file={secret}").status_code == 403
        assert own.http.get(f"{server}/gradio_api/file={server}/config").status_code == 403

        # and the uploads themselves work, for their owners
        event, outputs = own.upscale({"path": own_path, "meta": META})
        assert event == "complete" and "PSNR to teacher" in outputs[2]
        assert other.upscale({"path": others_path, "meta": META})[0] == "complete"
    finally:
        own.close()
        other.close()
        if link is not None:
            link.unlink(missing_ok=True)


def test_gradio_client_uploads_still_work(server, tmp_path):
    client = gradio_client.Client(server + "/", verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
    out_teacher, out_student, report = client.predict(
        gradio_client.handle_file(str(_save(_photo(), tmp_path / "in.png"))), "teacher", "student", "auto", 16,
        api_name="/upscale")
    assert np.asarray(Image.open(out_teacher)).shape == (80, 80, 3)
    assert " dB" in report and "inf dB" not in report


# ----------------------------------------------------------------------------------------------- pictures


def test_sixteen_bit_gray_upload_is_not_white(server, artifacts, tmp_path):
    ramp = np.linspace(300, 60000, 16 * 16).reshape(16, 16).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    client = gradio_client.Client(server + "/", verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
    out_teacher, out_student, report = client.predict(gradio_client.handle_file(str(path)), "teacher", "student",
                                                      "auto", 16, api_name="/upscale")
    shown = np.asarray(Image.open(out_teacher))
    expected = Session(artifacts[0]).run(ramp, tile=16)  # uint16 in, uint16 out
    assert shown.shape[:2] == (64, 64) and shown.min() < 200  # a ramp, not white
    assert np.abs(shown.astype(int) - np.rint(expected / 257).astype(int)).max() <= 1
    assert "inf dB (identical)" not in report


def test_exif_rotated_upload_comes_back_upright(server, artifacts, tmp_path):
    photo = _photo(24)[:, :16]  # 24 high, 16 wide as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the camera was held upright
    path = _save(photo, tmp_path / "portrait.png", exif=exif)
    client = gradio_client.Client(server + "/", verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
    out_teacher, _, report = client.predict(gradio_client.handle_file(str(path)), "teacher", "student", "auto", 16,
                                            api_name="/upscale")
    upright = np.rot90(photo, k=-1)  # what a viewer shows: 16 high, 24 wide
    assert np.array_equal(np.asarray(Image.open(out_teacher)), Session(artifacts[0]).run(upright, tile=16))
    assert "24x16 ->" in report


# ----------------------------------------------------------------------------------------------- bounded work


def test_tile_size_floor_and_ceiling_are_enforced_by_the_server(server, tmp_path):
    client = RestClient(server)
    try:
        path = client.upload(_save(_photo(), tmp_path / "in.png"))
        for tile in (1, TILE_MIN_PX - 1, TILE_MAX_PX + 1, 2.5, -16):
            event, message = client.upscale({"path": path, "meta": META}, tile=tile)
            assert event == "error" and f"from {TILE_MIN_PX} to {TILE_MAX_PX} px" in message, (tile, message)
        for tile in (0, TILE_MIN_PX, TILE_MAX_PX):
            assert client.upscale({"path": path, "meta": META}, tile=tile)[0] == "complete", tile
    finally:
        client.close()


def test_session_budget_stops_between_tiles(artifacts):
    session = Session(artifacts[0])
    with pytest.raises(OverBudget, match="stopped after 0 of 9 tiles: over the time budget of 0 s") as info:
        session.run(_photo(40), tile=16, budget_s=0.0)
    assert (info.value.done, info.value.total) == (0, 9)
    assert session.run(_photo(40), tile=16, budget_s=60.0).shape == (160, 160, 3)


def test_a_request_stops_at_its_time_budget_and_the_queue_is_bounded(artifacts, tmp_path):
    demo = build_app(artifacts, max_pixels=64 * 64, request_budget_s=1e-6)
    assert demo._queue.max_size == QUEUE_SIZE
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      httpx_kwargs={"timeout": TIMEOUT_S})
        with pytest.raises(Exception, match="stopped after 0 of 9 tiles: over the time budget of 1e-06 s per request"):
            client.predict(gradio_client.handle_file(str(_save(_photo(40), tmp_path / "in.png"))), "teacher",
                           "student", "auto", 16, api_name="/upscale")
    finally:
        demo.close()


# ----------------------------------------------------------------------------------------------- artifacts


def _copy(artifact: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(artifact, copy)
    return copy


def test_format_version_is_checked(artifacts, tmp_path):
    art = _copy(artifacts[1], tmp_path, "v99")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = 99
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServeError, match="format_version 99; this gankd reads version 1"):
        Session(art)
    with pytest.raises(ServeError, match="format_version 99"):
        build_app([art])


def test_a_model_file_changed_after_export_is_refused(artifacts, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    art = _copy(artifacts[1], tmp_path, "edited")
    path = art / "model.onnx"
    size = path.stat().st_size
    graph = onnx.load(str(path))
    weight = graph.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.25  # one weight changed in place: same size, still a valid graph
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(path))
    assert path.stat().st_size == size
    with pytest.raises(ServeError, match="model.onnx does not match the sha256 in manifest.json") as info:
        Session(art)
    assert "\n" not in str(info.value) and "--no-verify" in str(info.value)
    assert Session(art, verify=False).backend == "ort"

    src = tmp_path / "in"
    src.mkdir()
    _save(_photo(), src / "a.png")
    assert demo_main(["upscale", str(art), str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the sha256" in err
    assert demo_main(["upscale", str(art), str(src), str(tmp_path / "out"), "--no-verify"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()
    # the demo checks before it listens
    assert demo_main([str(art), "--port", str(_free_port())]) == 2
    assert "does not match the sha256" in capsys.readouterr().err


def test_busy_port_is_one_line(artifacts):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        exe = shutil.which("gankd-demo", path=str(BIN))
        proc = subprocess.run([exe, str(artifacts[0]), "--host", "127.0.0.1", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: port {port} on 127.0.0.1 is in use (another gankd-demo?); pass --port with a " \
                          "free one\n"
