"""A tiny, randomly initialised open_clip model for tests: registered as ``gankd-tiny-clip`` and saved to a file.

The config is a shrunken ViT-B-32 (embed 16, 32×32 input, patch 8, 2 vision / 1 text layers, 2 heads each) so that
``CLIPImageTeacher.from_files`` runs on a real open_clip model in well under a second. Nothing is downloaded: the
weights are random and the tokenizer is the BPE vocabulary shipped inside the open_clip wheel.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TINY_CLIP_NAME = "gankd-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip() -> str:
    """Add the tiny config to open_clip's registry (once per process) and return its model name."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        config_dir = Path(tempfile.mkdtemp(prefix="gankd-tiny-clip-"))
        (config_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(config_dir)
    return TINY_CLIP_NAME


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[str, Path]:
    """Build the tiny model with seeded random weights, save its state dict under ``folder``; (name, path)."""
    import open_clip

    name = register_tiny_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    path = Path(folder) / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return name, path
