"""PNG figures and markdown tables for ``report.md`` in a run dir.

matplotlib imports on first use (it is an optional, slow import). Figures are drawn on an explicit Agg canvas rather
than through pyplot: no global backend switch (a notebook user keeps theirs), no figure registry to leak from, and it
works on headless machines.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from gankd.distill.errors import GankdError

MISSING = "—"


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def _to_image(x: Tensor, size: tuple[int, int]) -> np.ndarray:
    """3×h×w in [0, 1] -> H×W×3 array; smaller images (the LR input) are nearest-upscaled so pixels stay visible."""
    if x.dim() != 3 or x.shape[0] != 3:
        raise GankdError(f"strip cells must be 3×H×W tensors, got shape {tuple(x.shape)}")
    x = x.detach().float().cpu().clamp(0.0, 1.0)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x[None], size=size, mode="nearest")[0]
    return x.permute(1, 2, 0).numpy()


def save_strip(
    path: str | Path,
    rows: list[dict[str, Tensor]],
    columns: Sequence[str] = ("LR", "bicubic", "teacher", "student"),
    max_rows: int = 4,
    captions: list[dict[str, str]] | None = None,
) -> Path:
    """One row per validation image, one column per source, all at HR size so details line up across columns.

    A cell missing from a row is left blank; ``captions[i][column]`` (e.g. "31.2 dB") is written under that cell.
    """
    rows = rows[:max_rows]
    if not rows:
        raise GankdError("save_strip needs at least one row of images")
    heights = [max(t.shape[-2] for t in row.values()) for row in rows]
    widths = [max(t.shape[-1] for t in row.values()) for row in rows]
    cell_in = float(np.clip(max(widths) / 100, 2.0, 5.0))
    figure = _figure(cell_in * len(columns), cell_in * max(h / w for h, w in zip(heights, widths)) * len(rows) + 0.4)
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column)
            if column in row:
                ax.imshow(_to_image(row[column], (heights[i], widths[i])), interpolation="nearest")
            caption = (captions[i] if captions and i < len(captions) else {}).get(column)
            if caption:
                ax.set_xlabel(caption)
    return _save(figure, path, dpi=max(100, int(max(widths) / cell_in)))


def save_grid_100(path: str | Path, cells: dict[str, Tensor], columns: int = 2, label_px: int = 14) -> Path:
    """Images at 100% (one image pixel = one PNG pixel, no resampling), ``columns`` per row, each titled by its key
    in a band above it: what a user sees at 1:1, where blur and texture differ, not a rescaled thumbnail."""
    from PIL import Image, ImageDraw

    if not cells:
        raise GankdError("save_grid_100 needs at least one image")
    arrays = {name: (x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
              for name, x in cells.items()}
    h = max(a.shape[0] for a in arrays.values())
    w = max(a.shape[1] for a in arrays.values())
    rows = -(-len(arrays) // columns)
    gap = 4
    canvas = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + label_px + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, array) in enumerate(arrays.items()):
        left, top = (i % columns) * (w + gap), (i // columns) * (h + label_px + gap)
        draw.text((left + 2, top + 1), name, fill="black")
        canvas.paste(Image.fromarray(array), (left, top + label_px))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _flat(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def save_histograms(path: str | Path, scores: dict[str, np.ndarray | Tensor], title: str, bins: int = 50) -> Path:
    """Overlaid histograms of discriminator outputs (SDAKD Fig. 3: teacher D vs student D on student outputs).

    Shared bin edges make the bars comparable; a dashed line marks each mean, which is what the two D's disagree on.
    """
    data = {name: _flat(values) for name, values in scores.items()}
    if not data or not all(v.size for v in data.values()):
        raise GankdError(f"save_histograms needs non-empty score arrays, got {[k for k, v in data.items()] or 'none'}")
    for name, values in data.items():
        if not np.isfinite(values).all():
            raise GankdError(f"discriminator scores {name!r} contain NaN or inf")
    edges = np.histogram_bin_edges(np.concatenate(list(data.values())), bins=bins)
    figure = _figure(6.0, 4.0)
    ax = figure.subplots()
    for k, (name, values) in enumerate(data.items()):
        color = f"C{k}"
        mean = float(values.mean())
        ax.hist(values, bins=edges, alpha=0.5, color=color, label=f"{name} (mean {mean:.3f})")
        ax.axvline(mean, color=color, linestyle="--", linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("discriminator output")
    ax.set_ylabel("count")
    ax.legend()
    return _save(figure, path)


def save_pareto(
    path: str | Path,
    points: list[dict],
    x: str = "latency_ms",
    y: str = "psnr",
    label: str = "name",
    front: list[int] | None = None,
) -> Path:
    """Scatter of candidates (e.g. latency vs fidelity); ``front`` (indices into ``points``) is drawn as a line."""
    if not points:
        raise GankdError("save_pareto needs at least one point")
    for i, point in enumerate(points):
        if point.get(x) is None or point.get(y) is None:
            raise GankdError(f"pareto point {i} ({point.get(label, '?')}) lacks {x!r} or {y!r}")
    xs = np.array([float(p[x]) for p in points])
    ys = np.array([float(p[y]) for p in points])
    figure = _figure(6.0, 4.5)
    ax = figure.subplots()
    ax.scatter(xs, ys, color="C0", zorder=2)
    for point, px, py in zip(points, xs, ys):
        ax.annotate(str(point.get(label, "")), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        order = sorted(front, key=lambda i: xs[i])
        ax.plot(xs[order], ys[order], color="C3", marker="o", zorder=3, label="Pareto front")
        ax.legend()
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.margins(0.1)  # room for the labels of the extreme points
    return _save(figure, path)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return MISSING
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = ".2f") -> str:
    """GitHub markdown table; a key missing from a row (or None) shows as "—". Numeric columns are right-aligned."""

    def numeric(column: str) -> bool:
        present = [r[column] for r in rows if r.get(column) is not None]
        return bool(present) and all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in present
        )

    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])
