"""gankd.export: ONNX / torch.export / TensorRT export with parity checks, and the trtexec-style benchmark.

May import gankd.distill (it exports model folders). The exporter and benchmark land with the export issue.
"""
