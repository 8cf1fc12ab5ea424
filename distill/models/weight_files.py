"""The one loader for weight files (after timm ``_helpers.py``).

safetensors is preferred; ``.pth``/``.pt``/``.ckpt`` go through ``torch.load(weights_only=True)``. There is never a
fallback to full pickle: a file that needs it is refused; the one class allowed beyond tensors and containers is
``argparse.Namespace`` (rosinality StyleGAN2 checkpoints pickle their training args in one; it holds data only).
Key-prefix cleaning and the choice between the containers that training codes wrap state dicts in (``params_ema``,
``params``, ``state_dict`` ...) live here too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.errors import first_line

# BasicSR/Real-ESRGAN/GCFSR save {"params_ema": ..., "params": ...}; EMA weights are the ones to serve.
STATE_DICT_CONTAINERS = ("params_ema", "params", "g_ema", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")
# The only non-tensor class a weight file may hold: rosinality checkpoints pickle their argparse args.
SAFE_GLOBALS = [argparse.Namespace]
# torch.save's legacy (non-zip) format starts with a pickle of its magic number (LONG1, 10 bytes little-endian)
LEGACY_TORCH_MAGIC = bytes.fromhex("8a0a6cfc9c46f9206aa85019")
PICKLE_PROTO = 0x80
ZIP_LOCAL_HEADER = b"PK\x03\x04"
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit (safetensors refuses larger headers too)
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_weights(path: str | Path) -> dict:
    """Read a weight file into a dict without executing code; one-line errors for missing/corrupted/unsafe files."""
    path = Path(path)
    if path.is_dir():
        raise GankdError(f"{str(path)!r} is a folder, not a weight file")
    if not path.is_file():
        raise GankdError(f"weight file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise GankdError(f"weight file {str(path)!r} is empty")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    _check_torch_file(path)
    try:
        # torch warns about pickle protocols it did not write; the error below says what matters, in one line
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        opcode = re.search(r"Unsupported operand (\d+)", str(exc))
        if opcode and not found:  # e.g. a legacy torch.save at pickle protocol 4: FRAME (149) is not read
            raise GankdError(f"cannot load {str(path)!r}: its pickle uses opcode {opcode.group(1)}, which torch's "
                             "weights-only loader does not read; re-save it with a current torch.save or as "
                             "safetensors") from None
        if found or "weights only load failed" in str(exc).lower():
            what = f"it references {found.group(1)}" if found else "it needs more than tensors to load"
            raise GankdError(f"refusing to load {str(path)!r}: {what}; gankd loads weights only "
                             "(torch.load weights_only=True), never code") from None
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure of the weights-only unpickler means a bad file
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise GankdError(f"weight file {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def _check_torch_file(path: Path) -> None:
    """Refuse, from its first bytes, a file torch.save did not write: a plain Python pickle (torch.load would only
    say it "needs more than tensors") or bytes that are no checkpoint at all."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    pickled = head[:1] == bytes([PICKLE_PROTO])
    if zipfile.is_zipfile(path):
        _check_zip_budget(path)
        return
    if pickled and LEGACY_TORCH_MAGIC in head:
        return
    if head.startswith(ZIP_LOCAL_HEADER):
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (an incomplete zip archive)")
    if pickled:
        raise GankdError(f"refusing to load {str(path)!r}: it is a plain Python pickle, not a torch.save checkpoint; "
                         "gankd loads weights only, never pickled objects (save the state dict with torch.save "
                         "or safetensors)")
    raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (not a torch.save checkpoint: "
                     f"it starts with bytes {head[:4].hex()})")


def memory_budget_bytes() -> int:
    """The most tensor bytes one weight file may declare: half of this machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 8 GiB
        return 8 << 30


def _check_budget(path: Path, declared: int) -> None:
    budget = memory_budget_bytes()
    if declared > budget:
        raise GankdError(f"weight file {str(path)!r} declares {declared / 2**30:.1f} GiB of tensors, more than the "
                         f"{budget / 2**30:.1f} GiB (half of this machine's memory) gankd will load")


def check_safetensors_header(path: Path) -> None:
    """Check a .safetensors file against its own header before anything is allocated: a sane header length, every
    tensor's byte range equal to its dtype × shape and inside the file, the ranges tiling the data exactly, and the
    total within ``memory_budget_bytes``. A header that lies (or a bomb that is really that large) is one line."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (shorter than a safetensors header)")
        length = struct.unpack("<Q", head)[0]
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (header of {length} bytes in a "
                             f"{size}-byte file)")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (its header is not a JSON object)")
    data_bytes, ranges = size - 8 - length, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ranges.append(_tensor_range(path, name, info, data_bytes))
    _check_budget(path, sum(end - begin for begin, end in ranges))
    ranges.sort()
    if any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])) or (ranges and ranges[0][0] != 0):
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted (its tensors' byte ranges overlap or "
                         "leave gaps)")


def _tensor_range(path: Path, name: str, info, data_bytes: int) -> tuple[int, int]:
    bad = f"weight file {str(path)!r} is truncated or corrupted (tensor {str(name)[:60]!r}"
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = _SAFETENSORS_ITEMSIZE[dtype]
        if not all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise GankdError(f"{bad}: a header entry that is not dtype, shape and data_offsets)") from None
    if end > data_bytes or begin > end:
        raise GankdError(f"{bad}: bytes {begin}..{end} lie outside the file's {data_bytes} bytes of data)")
    if end - begin != math.prod(shape) * itemsize:
        raise GankdError(f"{bad}: shape {list(shape)[:8]} of {dtype} needs {math.prod(shape) * itemsize} bytes, "
                         f"the header gives it {end - begin})")
    return begin, end


def _check_zip_budget(path: Path) -> None:
    """A torch.save zip: the uncompressed sizes its directory declares, against the budget, before torch.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None
    _check_budget(path, declared)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise GankdError(f"weight file {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None


def extract_state_dict(obj: dict, source: str = "checkpoint", prefer: tuple[str, ...] = STATE_DICT_CONTAINERS):
    """Pick the state dict out of a checkpoint dict and strip wrapper prefixes. Returns (state_dict, container)."""
    container = None
    for key in prefer:
        if isinstance(obj.get(key), dict):
            obj, container = obj[key], key
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise GankdError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"expected a state dict or one under {', '.join(prefer)}"
            )
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    if not state:
        raise GankdError(f"{source}: no tensors found")
    return state, container


def load_state_dict_strict(model: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatched key and both shapes."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise GankdError(f"{source} does not match the model: key {key!r} {list(tensor.shape)} is missing")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise GankdError(
                f"{source} does not match the model: {key!r} has shape {list(state[key].shape)} in the file "
                f"but {list(tensor.shape)} in the model"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise GankdError(f"{source} does not match the model: unexpected key {extra[0]!r} ({len(extra)} unexpected)")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise GankdError(f"{source}: tensor {bad!r} contains NaN or Inf")
    model.load_state_dict(state, strict=True)
