"""KD-DLGAN: a frozen CLIP image encoder teaches the discriminator (data-limited GAN training).

After Cui et al., "KD-DLGAN: Data Limited Image Generation via Knowledge Distillation" (CVPR 2023); official code
``cuikaiwen18/KD_DLGAN`` (``biggan_cifar/losses.py``, ``third_party/train_fns.py``). Two terms join D's loss,
L_D = L_adv + L_AGKD + L_CGKD, with weights applied by the caller:

- AGKD (aggregated generative KD): a head D^f on D's last feature regresses CLIP's image features I(·) of the same
  (augmented) images, L1; with probability p per step it also regresses the *other* side's features
  (I(x) from D^f(G(z)) and I(G(z)) from D^f(x)), which keeps D from separating real and fake too easily.
- CGKD (correlated generative KD): image–text correlations C = normalize_rows(F·Tᵀ) against K text prompts; D^f's
  correlations match CLIP's (L1), and a diversity term (mean pairwise cosine of CLIP's correlation rows of G(z))
  pushes the generated images apart in CLIP's image–text space.

Where this differs from the official code, and why:

- CLIP input: the official code upsamples [-1, 1] images ×7 with nearest neighbour and skips CLIP's mean/std. Here
  images are resized the way CLIP was trained (bicubic, shortest side then centre crop) and normalised with the
  checkpoint's mean/std, on tensors, inside the autograd graph.
- Features stay *un-normalised* (raw ``encode_image`` / ``encode_text``, as the official code uses them); only the
  correlation rows are L2-normalised (``F.normalize(I·Tᵀ)``, as the official code does).
- AGKD uses L1 (mean absolute error, the paper's |·|) with a per-step Bernoulli(p) gate; the official code uses
  per-sample L2 distances and always aggregates.
- The diversity term is the paper's pairwise cosine similarity, vectorised; the official code computes a different
  term on CLIP features taken under ``no_grad``, so it never reaches G. Here it is not detached (see below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankd.distill.errors import GankdError
from gankd.serve.errors import first_line

FACE_EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "disgust", "anger", "fear")
DEFAULT_TEMPLATE = "A photo of a {label}"
AGKD_PROBABILITY = 0.7
MISSING_WEIGHTS = ("KD-DLGAN needs CLIP weights: set clip_model and clip_weights to a local open_clip checkpoint "
                   "(none can be downloaded here)")


class CLIPImageTeacher(nn.Module):
    """A frozen open_clip model seen as an image-feature teacher I(·), with the text features of the prompts.

    ``forward`` is differentiable with respect to its *input* (CGKD's diversity term sends gradient through
    I(G(z)) to G) while every CLIP parameter stays frozen and the model stays in eval mode.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, image_size: tuple[int, int],
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        output_dim = getattr(model.visual, "output_dim", None)
        if output_dim is None:
            with torch.no_grad():
                output_dim = self.model.encode_image(torch.zeros(1, 3, *image_size)).shape[-1]
        self.embed_dim = int(output_dim)

    @classmethod
    def from_files(cls, model_name: str, weights: str | Path | None,
                   device: str | torch.device = "cpu") -> CLIPImageTeacher:
        """Build ``model_name`` and load a local checkpoint file; never downloads. ``model_name`` is an open_clip
        config name (``ViT-B-32``) or the path of a model-config JSON in open_clip's format (its file stem becomes
        the name), for custom or shrunken CLIPs."""
        if not weights:
            raise GankdError(MISSING_WEIGHTS)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GankdError(f"CLIP weights not found at {path} (clip_weights must be a local open_clip checkpoint)")
        import open_clip

        if str(model_name).endswith(".json"):
            config_path = Path(model_name).expanduser()
            if not config_path.is_file():
                raise GankdError(f"clip_model: model config {config_path} not found")
            open_clip.add_model_config(config_path)
            model_name = config_path.stem

        try:
            # An absolute path is never mistaken for a pretrained tag, which open_clip would download.
            model = open_clip.create_model(model_name, pretrained=str(path.resolve()), device=device,
                                           pretrained_image=False, pretrained_text=False)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            raise GankdError(f"cannot build CLIP {model_name!r} from {path}: {first_line(error)}") from None
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess.get("size", model.visual.image_size)
        size = (size, size) if isinstance(size, int) else tuple(size)
        teacher = cls(model, _tokenizer(model_name), size, tuple(preprocess["mean"]), tuple(preprocess["std"]))
        return teacher.to(device)

    def train(self, mode: bool = True) -> CLIPImageTeacher:
        # A teacher: dropout and patch dropout stay off whatever the training loop asks of its modules.
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """N×3×H×W in [-1, 1] -> CLIP input: bicubic resize of the shortest side, centre crop, mean/std."""
        height, width = self.image_size
        h, w = images.shape[-2:]
        if (h, w) != (height, width):
            scale = max(height / h, width / w)
            size = (max(height, round(h * scale)), max(width, round(w * scale)))
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)
            top, left = (size[0] - height) // 2, (size[1] - width) // 2
            images = images[..., top : top + height, left : left + width]
        return ((images + 1) / 2 - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """N×M raw (not L2-normalised) CLIP image features of N×3×H×W images in [-1, 1], any H and W."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise GankdError(f"CLIP teacher needs N×3×H×W images, got shape {tuple(images.shape)}")
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(self.preprocess(images.float()).to(dtype)).float()

    @torch.no_grad()
    def text_features(self, labels: tuple[str, ...] | list[str], template: str = DEFAULT_TEMPLATE) -> Tensor:
        """K×M raw CLIP text features of ``template`` filled with each label; computed once, without grad."""
        tokens = self.tokenizer([template.format(label=label) for label in labels]).to(self.mean.device)
        return self.model.encode_text(tokens).float()


def _tokenizer(model_name: str) -> Any:
    """open_clip's tokenizer for ``model_name``; the BPE tokenizer shipped in the wheel when that needs a download."""
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name)
    except (OSError, ValueError, RuntimeError, ImportError) as error:
        config = open_clip.get_model_config(model_name) or {}
        if config.get("text_cfg", {}).get("hf_tokenizer_name"):  # the BPE vocabulary would give wrong tokens
            raise GankdError(f"the tokenizer of CLIP {model_name!r} is not available offline: "
                             f"{first_line(error)}") from None
        return open_clip.tokenizer.SimpleTokenizer()


class ProjectionHead(nn.Module):
    """D^f: maps D's last-layer feature (N×F) into CLIP's embedding space (N×M).

    One linear layer. The official head is two stacked linear layers (F→1024→512) with no non-linearity between
    them, which is the same family of maps as a single linear layer; a deeper non-linear head would let the head,
    rather than D's own features, absorb the knowledge being distilled.
    """

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features.flatten(1))


# ------------------------------------------------------------------------------------------------------------ losses


def agkd_loss(i_real: Tensor, i_fake: Tensor, d_real: Tensor, d_fake: Tensor, aggregate: bool) -> Tensor:
    """L_AGKD: L1 from D^f's features to CLIP's on the same images, plus the crossed pairs when ``aggregate``.

    CLIP's features are targets (detached here): this term trains D and its head, never G.
    """
    i_real, i_fake = i_real.detach(), i_fake.detach()
    loss = F.l1_loss(d_real, i_real) + F.l1_loss(d_fake, i_fake)
    if aggregate:
        loss = loss + F.l1_loss(d_fake, i_real) + F.l1_loss(d_real, i_fake)
    return loss


def agkd_gate(generator: torch.Generator, p: float = AGKD_PROBABILITY) -> bool:
    """The per-step Bernoulli(p) draw deciding whether AGKD aggregates this step (from ``generator``, resumable)."""
    if not 0.0 <= p <= 1.0:
        raise GankdError(f"AGKD probability must be in [0, 1], got {p}")
    return bool(torch.rand((), generator=generator, device=generator.device) < p)


def correlation(features: Tensor, text: Tensor) -> Tensor:
    """C = normalize_rows(F·Tᵀ): N×K image–text correlations, each row L2-normalised (as the official code)."""
    return F.normalize(features @ text.t(), dim=1)


def cgkd_diversity_loss(c_t: Tensor) -> Tensor:
    """Mean cosine similarity over ordered pairs i≠j of the rows of C_T (sum over pairs divided by N(N−1)).

    Dividing keeps the term's weight independent of the batch size. Not detached: the gradient is meant to reach G
    through I(G(z)) (the official code computes its version on ``no_grad`` CLIP features, which leaves it inert).
    """
    n = c_t.shape[0]
    if n < 2:
        return c_t.sum() * 0.0
    rows = F.normalize(c_t, dim=1)
    gram = rows @ rows.t()
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


def cgkd_match_loss(c_t: Tensor, c_s: Tensor) -> Tensor:
    """L1 between CLIP's correlations C_T (the target, detached) and D^f's correlations C_S."""
    return F.l1_loss(c_s, c_t.detach())


def kddlgan_d_terms(i_real: Tensor, i_fake: Tensor, d_real: Tensor, d_fake: Tensor, text: Tensor,
                    aggregate: bool) -> dict[str, Tensor]:
    """The discriminator's KD-DLGAN terms from CLIP features I(·) and D^f(·) of the images D saw (after
    DiffAugment): AGKD, and CGKD's match |C_T − C_S| with C = row-normalised features·Tᵀ of G(z). The CLIP side is
    the target; the caller weights the terms (L_D = L_d + λ·AGKD + λ·CGKD)."""
    return {"agkd": agkd_loss(i_real, i_fake, d_real, d_fake, aggregate=aggregate),
            "cgkd_match": cgkd_match_loss(correlation(i_fake, text), correlation(d_fake, text))}


def kddlgan_g_term(i_fake: Tensor, text: Tensor) -> Tensor:
    """CGKD's diversity term on I(G(z)) with its gradient: a function of G's samples alone, so it acts in G's step
    (in L_D it would be a constant for D)."""
    return cgkd_diversity_loss(correlation(i_fake, text))
