"""Write a model in the ncnn layout realesrgan-ncnn-vulkan ships (test fixture: tiny models, error cases).

Only what the importer reads is written faithfully: the layer list with Convolution/PReLU/Eltwise/Concat/
PixelShuffle/Interp parameters, and the .bin with fp16-tagged conv weights, fp32 biases and PReLU slopes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from torch import nn

FP16_TAG = 0x01306B47


def write_ncnn(model: nn.Module, stem: Path, trailing_resize: bool = False, fp32: bool = False) -> Path:
    lines, blob = [], bytearray()
    lines.append("Input data 0 1 data")
    prev = "data"
    for i, (name, module) in enumerate(m for m in model.named_modules() if isinstance(m[1], (nn.Conv2d, nn.PReLU))):
        out = f"t{i}"
        if isinstance(module, nn.PReLU):
            lines.append(f"PReLU prelu_{i} 1 1 {prev} {out} 0={module.num_parameters}")
            blob += module.weight.detach().numpy().astype("<f4").tobytes()
        else:
            w = module.weight.detach().numpy()
            k = module.kernel_size[0]
            lines.append(f"Convolution conv_{i} 1 1 {prev} {out} 0={w.shape[0]} 1={k} 4={k // 2} "
                         f"5={int(module.bias is not None)} 6={w.size}")
            if fp32:
                blob += struct.pack("<I", 0) + w.astype("<f4").tobytes()
            else:
                blob += struct.pack("<I", FP16_TAG) + w.astype("<f2").tobytes()
            if module.bias is not None:
                blob += module.bias.detach().numpy().astype("<f4").tobytes()
        prev = out
    if any(n.endswith("rdb1") for n, _ in model.named_modules()):
        lines.append(f"Concat cat 1 1 {prev} c0")
        lines.append("Eltwise add 2 1 c0 data e0 0=1 -23301=2,2.000000e-01,1.000000e+00")
    else:
        lines.append(f"PixelShuffle ps 1 1 {prev} p0 0={model.config.upscale}")
        if trailing_resize:
            lines.append("Interp down 1 1 p0 output 0=3 1=5.000000e-01 2=5.000000e-01")
    stem.parent.mkdir(parents=True, exist_ok=True)
    param = stem.with_suffix(".param")
    param.write_text("7767517\n" + f"{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    stem.with_suffix(".bin").write_bytes(bytes(blob))
    return param


def reference_fp16(model: nn.Module) -> nn.Module:
    """The model with conv weights rounded through fp16, as ncnn stores them."""
    import copy

    import torch

    out = copy.deepcopy(model)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.from_numpy(m.weight.numpy().astype(np.float16).astype(np.float32)))
    return out
