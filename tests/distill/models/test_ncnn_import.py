"""ncnn import on tiny models written in the realesrgan-ncnn-vulkan layout, and its bad-input errors."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import GankdError, create_model
from gankd.distill.models.importers import import_ncnn

from helpers.ncnn_writer import reference_fp16, write_ncnn

TINY = [("rrdbnet", dict(num_feat=16, num_block=2, num_grow_ch=8)),
        ("srvgg_compact", dict(num_feat=16, num_conv=3, upscale=4))]


@pytest.mark.parametrize("arch,kwargs", TINY, ids=[a for a, _ in TINY])
def test_round_trip_fp16(arch, kwargs, tmp_path):
    model = create_model(arch, **kwargs).eval()
    param = write_ncnn(model, tmp_path / "tiny")
    imported, config = import_ncnn(param)
    assert config.arch == arch and {k: config.kwargs[k] for k in kwargs} == kwargs
    assert config.provenance["format"] == "ncnn" and set(config.provenance["files"]) == {"tiny.param", "tiny.bin"}
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), reference_fp16(model)(x), rtol=0, atol=1e-6)


def test_fp32_storage_and_stem_path(tmp_path):
    model = create_model("srvgg_compact", num_feat=8, num_conv=1).eval()
    write_ncnn(model, tmp_path / "m", fp32=True)
    imported, _ = import_ncnn(tmp_path / "m")  # stem without suffix: .param/.bin beside it
    for a, b in zip(imported.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_truncated_bin(tmp_path):
    param = write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=1), tmp_path / "m")
    data = param.with_suffix(".bin").read_bytes()
    param.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(GankdError, match="is truncated"):
        import_ncnn(param)


def test_bin_of_another_model(tmp_path):
    small = write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=1), tmp_path / "small")
    write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=2), tmp_path / "big")
    with pytest.raises(GankdError, match="do not belong together"):
        import_ncnn(small, tmp_path / "big.bin")


def test_missing_files_and_bad_magic(tmp_path):
    with pytest.raises(GankdError, match="does not exist"):
        import_ncnn(tmp_path / "nothing.param")
    (tmp_path / "x.param").write_text("hello\n")
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    with pytest.raises(GankdError, match="not an ncnn .param file"):
        import_ncnn(tmp_path / "x.param")


def test_quantized_storage_tag_refused(tmp_path):
    param = write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=1), tmp_path / "m")
    data = bytearray(param.with_suffix(".bin").read_bytes())
    data[0:4] = (0x000D4B38).to_bytes(4, "little")
    param.with_suffix(".bin").write_bytes(bytes(data))
    with pytest.raises(GankdError, match="storage tag 0x000d4b38"):
        import_ncnn(param)


def test_resized_srvgg_variant_explained(tmp_path):
    param = write_ncnn(create_model("srvgg_compact", num_feat=8, num_conv=1), tmp_path / "m", trailing_resize=True)
    with pytest.raises(GankdError, match="import the x4 model"):
        import_ncnn(param)
