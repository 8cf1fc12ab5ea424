"""Serving that cannot be turned against its host (issue 14), through real clients on 127.0.0.1 and the real CLI.

- File access: crafted file payloads (absolute paths with and without Gradio's ``meta``, a missing file, ``..``, a
  symlink in Gradio's upload folder, a URL, another client's upload) are refused with one line that does not
  depend on whether the file exists; ``/file=`` does not hand out another client's upload or proxy URLs.
- Pictures: a 16-bit grayscale PNG is not white and an EXIF-rotated photo comes back upright, in the demo.
- Work: the tile size has a floor and a ceiling, a request stops at its time budget, the queue is bounded.
- Artifacts: a manifest of another format_version and a model file changed after export are refused (``--no-verify``
  lets the latter through); a busy port is one line.
- Logs: one line per refused request, with the id the client was told, and no traceback.
- The guard (audit cases 9 and 10): every content type FastAPI parses as JSON (``application/vnd.x+json``) is
  checked, any other request body is refused in one line, as are bodies that are not JSON or nest too deeply; a
  file two clients uploaded (same bytes, same name: one content-hashed path) belongs to both; any bad value in
  any input of any event (strings, numbers, lists, broken file payloads) is a one-line refusal, never a traceback.
- Limits: the demo refuses images outside the size limits with ``images.check_size``'s line.
"""

from __future__ import annotations

import itertools
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
from gankd.serve.guard import MAX_JSON_BODY_BYTES, REFUSED, ClientFiles, neutralise, parsed_as_json
from gankd.serve.images import check_size
from gankd.serve.ports import free_port

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

MODEL = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, task="sr", scale=4)
TIMEOUT_S = 60
BIN = Path(sys.executable).parent
META = {"_type": "gradio.FileData"}

pytestmark = pytest.mark.usefixtures("one_thread")


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
    port = free_port()
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

    def upscale(self, payload, tile=16, content_type: str = "application/json") -> tuple[str, object]:
        """("complete", outputs) or ("error", message); ("http <status>", text) when the POST itself is refused."""
        body = json.dumps({"data": [payload, "teacher", "student", "auto", tile]}).encode()
        return self.call_raw(body, content_type)

    def call_raw(self, body: bytes, content_type: str | None = "application/json") -> tuple[str, object]:
        headers = {"content-type": content_type} if content_type is not None else {}
        reply = self.http.post(f"{self.base}/gradio_api/call/upscale", content=body, headers=headers)
        if reply.status_code != 200:
            return f"http {reply.status_code}", reply.text
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


# ----------------------------------------------------------------------------------------------- the guard

# what FastAPI parses as JSON (type application, subtype json or *+json; case, parameters and spaces as
# email.message reads them) and what it does not
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json",
              "application/ld+json", "application/json ;charset=UTF-8", "APPLICATION/VND.API+JSON; q=1", "application/+json"]
OTHER_TYPES = ["text/plain", "text/json", "application/x-json", "application/x-www-form-urlencoded",
               "multipart/form-data; boundary=x", "application/json/x", "application/jsonx", "json"]


def test_the_guard_reads_content_types_as_fastapi_does():
    """The guard's rule against FastAPI itself: a route with a model body parses exactly the types the guard
    checks (case 9: ``application/vnd.x+json`` was parsed by FastAPI and skipped by the guard)."""
    from fastapi import Body, FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.post("/echo")
    def echo(body: dict = Body()):  # a JSON object body, as Gradio's routes take theirs
        return body["data"]

    with TestClient(app) as client:
        for kind in JSON_TYPES + OTHER_TYPES:
            reply = client.post("/echo", content=b'{"data": [1]}', headers={"content-type": kind})
            assert (reply.status_code == 200) == parsed_as_json(kind), (kind, reply.status_code)
    assert all(parsed_as_json(kind) for kind in JSON_TYPES) and not any(parsed_as_json(k) for k in OTHER_TYPES)


def test_every_json_content_type_is_guarded_and_the_others_refused(server, tmp_path, caplog, capfd):
    secret = _save(_photo(), tmp_path / "secret.png")
    client = RestClient(server)
    caplog.set_level(logging.WARNING, logger="gankd.serve")
    capfd.readouterr()
    try:
        for kind in JSON_TYPES:  # parsed: the file payload is refused by the guard, in gankd's line
            event, message = client.upscale({"path": str(secret), "meta": META}, content_type=kind)
            assert event == "error" and message is not None, (kind, message)
            assert message.startswith(f"Cannot use this upload: {REFUSED}. (request "), (kind, message)
        payload = json.dumps({"data": [{"path": str(secret), "meta": META}, "teacher", "student", "auto", 16]})
        for kind in OTHER_TYPES:  # not JSON to FastAPI, but Gradio's component server reads any body: refused
            status, text = client.call_raw(payload.encode(), kind)
            assert status == "http 415" and "request bodies must be JSON" in text and "\n" not in text, (kind, text)
        for body, status, words in ((b"{not json", "http 400", "not valid JSON"),
                                    (b"\xff\xfe{", "http 400", "not valid JSON"),
                                    (b"[" * 100_000 + b"]" * 100_000, "http 400", "nested too deeply"),
                                    (b" " * (MAX_JSON_BODY_BYTES + 1), "http 413", "request body over")):
            got, text = client.call_raw(body)
            assert got == status and words in text and "(request " in text and "\n" not in text, (got, text)
        assert client.upscale({"path": client.upload(secret), "meta": META})[0] == "complete"  # the server is up
    finally:
        client.close()
    assert "Traceback" not in capfd.readouterr().err
    assert len(_request_ids(caplog.records)) >= len(JSON_TYPES) + len(OTHER_TYPES) + 4


def test_clients_who_upload_the_same_file_both_own_it(server, tmp_path):
    """Case 10: B uploading A's bytes under A's name (one content-hashed path) used to take the path from A."""
    photo = _save(_photo(seed=11), tmp_path / "same.png")
    a, b, c = RestClient(server), RestClient(server), RestClient(server)
    try:
        path_a = a.upload(photo)
        assert a.upscale({"path": path_a, "meta": META})[0] == "complete"
        path_b = b.upload(photo)
        assert path_a == path_b  # Gradio's content hash: the premise of the case
        for client in (a, b, a):
            assert client.upscale({"path": path_a, "meta": META})[0] == "complete"
            assert client.http.get(f"{server}/gradio_api/file={path_a}").status_code == 200
        event, message = c.upscale({"path": path_a, "meta": META})  # who never uploaded it still may not
        assert event == "error" and REFUSED in message
        assert c.http.get(f"{server}/gradio_api/file={path_a}").status_code == 403
    finally:
        for client in (a, b, c):
            client.close()


def test_client_files_are_sets_of_owners_and_bounded():
    files = ClientFiles(max_uploads=4)
    files.add_upload("a", "/tmp/x/one.png")
    files.add_upload("b", "/tmp/x/one.png")
    assert files.allowed("a", "/tmp/x/one.png") and files.allowed("b", "/tmp/x/one.png")
    assert not files.allowed("c", "/tmp/x/one.png") and files.owned_by_another("c", "/tmp/x/one.png")
    assert not files.owned_by_another("a", "/tmp/x/one.png") and not files.owned_by_another("c", "/tmp/x/two.png")
    for n in range(10):  # many client ids uploading one file cannot grow the record past its bound
        files.add_upload(f"minted{n}", "/tmp/x/one.png")
    assert len(files._order) == 4 and len(files._owners["/tmp/x/one.png"]) == 4
    assert not files.allowed("a", "/tmp/x/one.png") and files.allowed("minted9", "/tmp/x/one.png")
    files.add_upload("a", "/tmp/x/other.png")  # re-uploading refreshes; the oldest pair goes
    assert files.allowed("a", "/tmp/x/other.png") and not files.allowed("minted6", "/tmp/x/one.png")


def test_file_payloads_are_rebuilt_from_their_path():
    own = "/tmp/gradio/abc/in.png"
    data = {"data": [{"path": own, "meta": {"_type": "gradio.FileData"}, "size": "big", "url": 5, "orig_name": "a"},
                     {"path": own, "meta": "x"}, {"path": 123, "meta": META}, {"meta": 7},
                     {"nested": [{"path": "/etc"}]},
                     {"path": "/etc/passwd"}, "/etc/passwd", {"other": 1}]}
    out, found = neutralise(data, lambda path: path == own)
    assert found == 6
    assert out["data"] == [{"path": own, "orig_name": "a", "meta": {"_type": "gradio.FileData"}}, {"path": own},
                           {"path": "gankd-refused-file"}, {"path": "gankd-refused-file"},
                           {"nested": [{"path": "gankd-refused-file"}]}, {"path": "gankd-refused-file"},
                           "/etc/passwd", {"other": 1}]


BAD_VALUES = ["/etc/passwd", 5, -1, 0.5, 1e300, None, True, [], {}, "x" * 500, [{"path": "/etc/passwd"}],
              {"path": 123, "meta": META}, {"meta": 7}, {"path": "/etc/passwd", "meta": "x"},
              {"a": {"path": "/etc/passwd", "meta": META}}]


def _join(client: RestClient, fn_index: int, data: list) -> tuple[bool, object]:
    """One event through Gradio's queue (what the browser uses): (success, output or error message)."""
    session = os.urandom(6).hex()
    reply = client.http.post(f"{client.base}/gradio_api/queue/join",
                             json={"data": data, "fn_index": fn_index, "session_hash": session})
    assert reply.status_code == 200, reply.text
    with client.http.stream("GET", f"{client.base}/gradio_api/queue/data?session_hash={session}") as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                return bool(message.get("success")), output.get("error") if not message.get("success") else output
    raise AssertionError("the event never completed")


def test_bad_values_in_any_input_of_any_event_are_one_line(server, tmp_path, caplog, capfd):
    """Every input of every event (the upscale call and the examples' loader), each bad value in turn with good
    values elsewhere: a one-line refusal that names the problem, never Gradio's ``{"error": null}`` and a traceback
    (what a string in the image input, or an example index that is not one, used to give)."""
    client = RestClient(server)
    config = client.http.get(f"{server}/config").json()
    components = {c["id"]: c for c in config["components"]}
    own = client.upload(_save(_photo(seed=2), tmp_path / "own.png"))
    good = {"image": {"path": own, "meta": META}, "dataset": 0}
    caplog.set_level(logging.WARNING, logger="gankd.serve")
    capfd.readouterr()
    refused = 0
    try:
        for dependency in config["dependencies"]:
            kinds = [components[i]["type"] for i in dependency["inputs"]]
            values = [good.get(kind, components[i]["props"].get("value"))
                      for kind, i in zip(kinds, dependency["inputs"])]
            assert _join(client, dependency["id"], values)[0], dependency.get("api_name")  # good values run
            for slot, bad in itertools.product(range(len(values)), BAD_VALUES):
                data = [*values[:slot], bad, *values[slot + 1:]]
                ok, message = _join(client, dependency["id"], data)
                case = (dependency.get("api_name"), kinds[slot], bad)
                if not ok:
                    assert isinstance(message, str) and "(request " in message and "\n" not in message, case
                    refused += 1
                elif kinds[slot] == "dataset":
                    raise AssertionError(case)  # only the examples' own indices load
    finally:
        client.close()
    assert refused >= 5 * len(BAD_VALUES)  # the upscale event's five inputs at least: the loop ran
    assert "Traceback" not in capfd.readouterr().err


def test_the_demo_refuses_sizes_with_the_one_line(server, tmp_path):
    client = RestClient(server)  # the server's limit: 64 x 64 pixels
    try:
        for width, height in ((1, 1), (7, 16), (16, 7), (65, 64)):
            path = client.upload(_save(np.zeros((height, width, 3), np.uint8), tmp_path / f"w{width}h{height}.png"))
            with pytest.raises(ServeError) as expected:
                check_size(width, height, 64 * 64)
            event, message = client.upscale({"path": path, "meta": META})
            assert event == "error" and message.startswith(f"Cannot use this upload: {expected.value}. (request ")
        path = client.upload(_save(_photo(64), tmp_path / "at_the_limit.png"))
        assert client.upscale({"path": path, "meta": META})[0] == "complete"
    finally:
        client.close()


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
    port = free_port()
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
    assert demo_main([str(art), "--port", str(free_port())]) == 2
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
