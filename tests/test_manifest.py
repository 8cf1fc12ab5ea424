"""One manifest schema and one reader (``gankd.serve.manifest``): a manifest written by gankd-export is read the same
by serve and by export, and a bad one is refused with the same one-line message on both paths (and by Session,
gankd-bench and the writer)."""

from __future__ import annotations

import json
import shutil

import pytest

from gankd.distill.errors import GankdError
from gankd.export import manifest as export_manifest
from gankd.export.cli import bench_main
from gankd.serve import FaceSession, GenerateSession, ServeError, Session, SRSession
from gankd.serve import manifest as serve_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifact(shared_artifacts):
    """A tiny x2 SR model exported once (ONNX only): the manifest both sides read."""
    return shared_artifacts["sr_small"][1]


def test_written_by_export_read_the_same_by_serve(artifact):
    on_disk = json.loads((artifact / "manifest.json").read_text())
    assert serve_manifest.read_manifest(artifact) == export_manifest.read_manifest(artifact) == on_disk
    assert export_manifest.REQUIRED_KEYS == serve_manifest.REQUIRED_KEYS  # the writer's keys are the reader's
    assert export_manifest.FORMAT_VERSION == serve_manifest.FORMAT_VERSION == on_disk["format_version"]
    session = Session(artifact, backend="ort")
    assert isinstance(session, SRSession) and session.manifest == on_disk


def test_session_class_follows_the_manifest_task(artifact):
    session = Session(artifact, backend="ort")
    assert type(session) is SRSession and session.task == "sr" and session.scale == 2
    with pytest.raises(ServeError, match=r"^Session.generate is for generate artifacts; .* is a sr artifact: use "
                                         r"Session.run$"):
        session.generate([1])
    for cls in (GenerateSession, FaceSession):  # a task's class opened on another task's artifact
        with pytest.raises(ServeError, match=rf"^{cls.__name__} runs {cls.task} artifacts; .* is a sr artifact"):
            cls(artifact)


def _broken(artifact, tmp_path, change) -> tuple:
    copy = tmp_path / "broken"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, manifest


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(format_version=99), "has format_version 99; this gankd reads version 1"),
    (lambda m: m.update(format="other"), "is not a gankd artifact manifest"),
    (lambda m: m.pop("opset"), "lacks the key 'opset'"),
    (lambda m: m.pop("files"), "lacks the key 'files'"),
    (lambda m: m.update(task="generate"), "lacks the key 'style_dim'"),  # the keys of its task
    (lambda m: m.update(task="video"), "has task 'video'"),
    (lambda m: m.update(files=[]), "'files' is not an object"),
    (lambda m: m.update(inputs=[]), "'inputs' is not a non-empty list"),
], ids=["format_version", "format", "missing-key", "missing-files", "missing-task-key", "task", "files", "inputs"])
def test_bad_manifest_is_refused_with_one_shared_line(artifact, tmp_path, capsys, change, words):
    copy, manifest = _broken(artifact, tmp_path, change)
    with pytest.raises(ServeError) as by_serve:
        serve_manifest.read_manifest(copy)
    message = str(by_serve.value)
    assert words in message and "\n" not in message
    with pytest.raises(GankdError) as by_export:
        export_manifest.read_manifest(copy)
    assert str(by_export.value) == message
    with pytest.raises(ServeError) as by_session:
        Session(copy)
    assert str(by_session.value) == message
    assert bench_main([str(copy), "--backends", "ort", "--iterations", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    with pytest.raises(GankdError) as by_writer:  # the writer refuses what the reader would
        export_manifest.write_manifest(tmp_path, manifest)
    assert str(by_writer.value) == message.replace(str(copy), str(tmp_path))
    assert not (tmp_path / "manifest.json").exists()


def test_missing_and_unreadable_manifests_read_the_same(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    for folder, words in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "manifest.json is missing"),
                          (tmp_path / "bad", "is not valid JSON")):
        with pytest.raises(ServeError) as by_serve:
            serve_manifest.read_manifest(folder)
        with pytest.raises(GankdError) as by_export:
            export_manifest.read_manifest(folder)
        assert words in str(by_serve.value) and str(by_export.value) == str(by_serve.value)
