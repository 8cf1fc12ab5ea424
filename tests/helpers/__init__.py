"""Test helpers (not tests): ``helpers.tiny_clip`` (a tiny random open_clip model) and ``helpers.ncnn_writer``
(models written in the ncnn layout). Importable from any test folder: conftest.py's folder, tests/, is on
sys.path."""
