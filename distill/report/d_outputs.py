"""What the discriminators of a run say about real, teacher and student images (SDAKD Fig. 2): one score per image
from every discriminator, as histograms (``d_outputs.png``) and a summary ``gankd-distill compare`` reads
(``d_outputs.json``)."""

from __future__ import annotations

import torch


@torch.no_grad()
def d_output_scores(nets, images: dict[str, torch.Tensor], kind: str, batch_size: int = 8
                    ) -> dict[str, torch.Tensor]:
    """One score per image for every discriminator of the run on every set of ``images`` (e.g. real, teacher,
    student): D's mean logit, through a sigmoid for the logistic losses (D's probability of "real", SDAKD Fig. 2)."""
    scores = {}
    for attr, label in (("teacher_d", "D_T"), ("student_d", "D_S")):
        d = getattr(nets, attr)
        if d is None:
            continue
        was_training = d.training
        d.eval()
        device = next(d.parameters()).device
        for name, x in images.items():
            logits = torch.cat([d(x[i:i + batch_size].to(device)).flatten(1).mean(1)
                                for i in range(0, len(x), batch_size)]).float().cpu()
            scores[f"{label}({name})"] = torch.sigmoid(logits) if kind in ("vanilla", "logistic") else logits
        d.train(was_training)
    return scores


def write_d_histograms(path, nets, images: dict[str, torch.Tensor], kind: str, title: str) -> bool:
    """``d_outputs.png`` (overlaid histograms) and ``d_outputs.json`` (mean and share above 0.5 per series, what
    ``gankd-distill compare`` reads); False when the run has no discriminator."""
    import json
    from pathlib import Path

    from . import plots

    scores = d_output_scores(nets, images, kind)
    if not scores:
        return False
    plots.save_histograms(path, scores, title=title)
    summary = {name: {"mean": float(v.mean()), "above_0.5": float((v > 0.5).float().mean()), "n": len(v)}
               for name, v in scores.items()}
    Path(path).with_suffix(".json").write_text(json.dumps({"kind": kind, "scores": summary}, indent=1) + "\n")
    return True
