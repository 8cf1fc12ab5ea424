"""gankd.export: ONNX / torch.export / TensorRT export with parity checks, and the trtexec-style benchmark.

May import gankd.distill (it exports model folders); gankd.serve reads only what this package writes (the artifact
folder and its manifest.json). Heavy packages (onnx, onnxruntime, onnxslim, tensorrt, matplotlib) import on first
use, so ``import gankd.export`` stays light.

Python API::

    from gankd.export import ExportSettings, export_model, BenchSettings, benchmark
    export_model("students/c025", "exports/c025", ExportSettings(formats=("onnx", "pt2"), int8=True))
    result = benchmark(["exports/x4plus", "exports/c025"], BenchSettings(backends=("ort",), iterations=10))
"""

from .bench import BenchSettings, benchmark
from .exporter import ExportSettings, export_model
from .manifest import read_manifest

__all__ = ["BenchSettings", "ExportSettings", "benchmark", "export_model", "read_manifest"]
