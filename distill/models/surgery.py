"""Teacher-initialised ("fast-start") students: cut a teacher's weights down to a student's shape.

A randomly initialised student needs GPU-days; one that starts from the teacher's own filters starts next to the
teacher and learns in minutes. Two cuts, which compose (depth first, then width):

* depth keeps some RRDB blocks. Every RRDB is residual (``x + 0.2 * f(x)``), so a dropped block is the identity and
  the remaining blocks still see features on the scale they were trained on.
* width keeps, per layer, the filters with the largest L1 norm (Li et al. 2017, "Pruning Filters for Efficient
  ConvNets"). Channels that residual or skip connections add together must share one index set, so they are scored
  together; a layer's input channels follow the kept outputs of the layer that feeds it.

Index sets are sorted, so a cut that keeps everything reproduces the teacher exactly. All functions are pure: they
read the teacher and return a new CPU state dict for ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gankd.distill.errors import GankdError
from gankd.serve.psnr import psnr_db

from .archs import RRDBNet, UNetDiscriminatorSN

# U-Net D layers wrapped in (old-style) spectral_norm: their state is weight_orig / weight_u / weight_v, no bias.
_D_SPECTRAL = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "conv8")


# --- block choice ---------------------------------------------------------------------------------------------------

def even_blocks(n_total: int, k: int) -> list[int]:
    """``k`` evenly spaced block indices, ``round(linspace(0, n_total - 1, k))``: both ends are kept (k >= 2) because
    the first blocks adapt conv_first's features and the last ones shape what the upsampler reads."""
    _check_count(k, n_total)
    step = (n_total - 1) / (k - 1) if k > 1 else 0.0
    return [math.floor(i * step + 0.5) for i in range(k)]  # round half up: distinct since step >= 1


@torch.no_grad()
def greedy_blocks(teacher: RRDBNet, k: int, calib_lr: Tensor) -> list[int]:
    """Keep ``k`` blocks by removing, one at a time, the block whose removal costs the least PSNR of the output
    against the full teacher's output on ``calib_lr``. O(n^2) forwards of a shrinking trunk: meant for a few cached
    LR crops, not a data set."""
    _check_rrdbnet(teacher)
    n = len(teacher.body)
    _check_count(k, n)
    if not isinstance(calib_lr, Tensor) or calib_lr.dim() != 4:
        raise GankdError(f"calib_lr must be a 4-D tensor of LR crops (N, C, H, W), got {_describe(calib_lr)}")
    param = next(teacher.parameters())
    feat = teacher.conv_first(_unshuffle(teacher, calib_lr.to(param.device, param.dtype)))  # shared by all trials
    target = _output_with_blocks(teacher, feat, range(n))
    keep = list(range(n))
    while len(keep) > k:
        scores = [_psnr(_output_with_blocks(teacher, feat, [b for b in keep if b != drop]), target) for drop in keep]
        keep.pop(max(range(len(keep)), key=scores.__getitem__))  # ties: the earliest block goes
    return keep


def check_blocks(blocks: Sequence[int], n_total: int) -> list[int]:
    """Validate an explicit list of teacher block indices; returned sorted, since blocks only compose in order."""
    if isinstance(blocks, (str, bytes)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise GankdError(f"blocks must be 'even', 'greedy' or a list of block indices, got {blocks!r}")
    keep = sorted(blocks)
    if not keep or len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= n_total:
        raise GankdError(f"blocks must be distinct indices in 0..{n_total - 1} (the teacher's RRDB blocks), "
                         f"got {list(blocks)}")
    return keep


# --- RRDBNet cuts ---------------------------------------------------------------------------------------------------

def rrdb_depth_cut(teacher: RRDBNet, keep: Sequence[int]) -> dict[str, Tensor]:
    """The teacher's state dict with only the RRDB blocks ``keep``, renumbered 0..k-1 in teacher order."""
    _check_rrdbnet(teacher)
    renumber = {str(old): str(new) for new, old in enumerate(check_blocks(keep, len(teacher.body)))}
    out = {}
    for key, value in _cpu_state(teacher).items():
        if key.startswith("body."):
            _, index, rest = key.split(".", 2)
            if index not in renumber:
                continue
            key = f"body.{renumber[index]}.{rest}"
        out[key] = value
    return out


def trunk_importance(state: dict[str, Tensor]) -> Tensor:
    """Per-channel score of the trunk features (num_feat). conv_first, every RDB's conv5 and conv_body all write
    into the same residual stream, so one index set serves the whole network: a channel scores the L1 norms of all
    filters that write it, each layer's scores divided by their mean so that no layer wins by scale alone."""
    writers = ["conv_first.weight", "conv_body.weight"]
    writers += [k for k in state if k.startswith("body.") and k.endswith(".conv5.weight")]
    return sum(_relative(filter_l1(state[k])) for k in writers)


def rrdb_width_cut(state: dict[str, Tensor], num_feat: int, num_grow_ch: int, num_up_feat: int) -> dict[str, Tensor]:
    """Cut an RRDBNet state dict (any depth) to the given widths. Trunk channels: ``trunk_importance``; each RDB's
    conv1..conv4 keep their own top-L1 grow channels; conv_up1, conv_up2 and conv_hr their own top-L1 filters."""
    trunk = top_channels(trunk_importance(state), num_feat, "the trunk (num_feat)")
    out = dict(state)
    out.update(_conv(state, "conv_first", trunk, None))
    for prefix in sorted({k.rsplit("conv1.", 1)[0] for k in state if k.endswith(".conv1.weight")}):
        out.update(_cut_rdb(state, prefix, trunk, num_grow_ch))
    out.update(_conv(state, "conv_body", trunk, trunk))
    kept_in = trunk
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        kept_out = top_channels(filter_l1(state[f"{name}.weight"]), num_up_feat, name)
        out.update(_conv(state, name, kept_out, kept_in))
        kept_in = kept_out
    out.update(_conv(state, "conv_last", None, kept_in))
    return out


def cut_rrdbnet(teacher: RRDBNet, keep: Sequence[int], num_feat: int, num_grow_ch: int,
                num_up_feat: int) -> dict[str, Tensor]:
    """The state dict of an RRDBNet student with blocks ``keep`` of ``teacher`` and the given widths."""
    return rrdb_width_cut(rrdb_depth_cut(teacher, keep), num_feat, num_grow_ch, num_up_feat)


def _cut_rdb(state: dict[str, Tensor], prefix: str, trunk: Tensor, num_grow_ch: int) -> dict[str, Tensor]:
    # conv_i reads cat(x, x1, .., x_{i-1}): its kept inputs are the trunk set, then each x_j's kept set, offset.
    num_feat = state[f"{prefix}conv1.weight"].shape[1]
    grow = state[f"{prefix}conv1.weight"].shape[0]
    inputs, out = [trunk], {}
    for i in range(1, 5):
        name = f"{prefix}conv{i}"
        kept = top_channels(filter_l1(state[f"{name}.weight"]), num_grow_ch, name)
        out.update(_conv(state, name, kept, torch.cat(inputs)))
        inputs.append(kept + num_feat + (i - 1) * grow)
    out.update(_conv(state, f"{prefix}conv5", trunk, torch.cat(inputs)))
    return out


# --- U-Net discriminator --------------------------------------------------------------------------------------------

def select_discriminator_channels(teacher_d: UNetDiscriminatorSN, width: float) -> dict[str, Tensor]:
    """The state dict of a U-Net D student with ``num_feat = round(teacher num_feat * width)``, keeping top-L1
    filters. The skip adds x4+x2, x5+x1 and x6+x0 tie conv4 to conv2, conv5 to conv1 and conv6 to conv0: each pair
    is scored together and shares one index set (also without skips, which costs nothing)."""
    if not isinstance(teacher_d, UNetDiscriminatorSN):
        raise GankdError(f"discriminator channel selection needs a UNetDiscriminatorSN, not {_describe(teacher_d)}")
    state = _cpu_state(teacher_d)
    c = max(1, round(teacher_d.config.num_feat * width))

    def keep(names: tuple[str, ...], n: int) -> Tensor:
        return top_channels(sum(_relative(filter_l1(_d_weight(state, m))) for m in names), n, "+".join(names))

    x0, x1, x2 = keep(("conv0", "conv6"), c), keep(("conv1", "conv5"), 2 * c), keep(("conv2", "conv4"), 4 * c)
    x3, x7, x8 = keep(("conv3",), 8 * c), keep(("conv7",), c), keep(("conv8",), c)
    plan = {"conv0": (x0, None), "conv1": (x1, x0), "conv2": (x2, x1), "conv3": (x3, x2), "conv4": (x2, x3),
            "conv5": (x1, x2), "conv6": (x0, x1), "conv7": (x7, x0), "conv8": (x8, x7), "conv9": (None, x8)}
    out = {}
    for name, (kept_out, kept_in) in plan.items():
        cut = _spectral_conv if name in _D_SPECTRAL else _conv
        out.update(cut(state, name, kept_out, kept_in))
    return out


def _d_weight(state: dict[str, Tensor], name: str) -> Tensor:
    return state[f"{name}.weight_orig" if name in _D_SPECTRAL else f"{name}.weight"]


def _spectral_conv(state: dict[str, Tensor], name: str, kept_out: Tensor | None,
                   kept_in: Tensor | None) -> dict[str, Tensor]:
    full = state[f"{name}.weight_orig"]
    weight = _take(_take(full, kept_out, 0), kept_in, 1)
    u, v = state[f"{name}.weight_u"], state[f"{name}.weight_v"]
    if weight.shape != full.shape:  # uncut: the teacher's converged vectors are exactly right, keep them
        u, v = _power_iteration(weight.flatten(1), _take(u, kept_out, 0))
    return {f"{name}.weight_orig": weight, f"{name}.weight_u": u, f"{name}.weight_v": v}


def _power_iteration(matrix: Tensor, u: Tensor, iters: int = 10) -> tuple[Tensor, Tensor]:
    # spectral_norm's (u, v) for the cut matrix, in torch's update order. The teacher's u sliced is a warm start
    # (the kept filters carry most of the norm); a fixed generator replaces a degenerate start, so cuts repeat.
    mat = matrix.float()
    u = u.float()
    if u.norm() < 1e-6:
        u = torch.randn(mat.shape[0], generator=torch.Generator().manual_seed(0))
    u = F.normalize(u, dim=0, eps=1e-12)
    for _ in range(iters):
        v = F.normalize(mat.t() @ u, dim=0, eps=1e-12)
        u = F.normalize(mat @ v, dim=0, eps=1e-12)
    return u.to(matrix.dtype), v.to(matrix.dtype)


# --- compact (SRVGG) students from a pretrained compact model ------------------------------------------------------

def resize_srvgg(state: dict[str, Tensor], num_conv: int, num_feat: int, num_feat_src: int,
                 num_conv_src: int) -> dict[str, Tensor]:
    """A pretrained SRVGGNetCompact's state resized to ``num_conv`` body convs of ``num_feat`` channels.

    Deeper: identity convs (Dirac kernel, zero bias, PReLU slope 1) are inserted evenly, so the deeper student computes
    exactly the pretrained function and training starts from it. Shallower: evenly spaced body convs are kept
    (``even_blocks``, the rule of RRDB depth cuts; widths agree, so the rest still connects). Narrower: each layer keeps
    the ``num_feat`` output channels the next conv relies on most (L1 of its weights over that input channel, Li et al.
    2017's criterion read from the consuming side), and the next conv keeps those inputs. Layer ``body.2k`` is a conv
    and ``body.2k+1`` its PReLU (``act_type: prelu``, the official layout).
    """
    if "body.1.weight" not in state:
        raise GankdError("resizing a compact model needs act_type 'prelu' (the PReLU slopes are part of the cut)")
    convs = [(state[f"body.{2 * i}.weight"], state[f"body.{2 * i}.bias"], state[f"body.{2 * i + 1}.weight"])
             for i in range(num_conv_src + 1)]  # the first conv and the body convs, each with its PReLU
    last = (state[f"body.{2 * num_conv_src + 2}.weight"], state[f"body.{2 * num_conv_src + 2}.bias"])
    if num_conv < num_conv_src:
        kept = {0} | {1 + i for i in even_blocks(num_conv_src, num_conv)} if num_conv else {0}  # 0: first conv
        convs = [c for i, c in enumerate(convs) if i in kept]
    elif num_conv > num_conv_src:
        after = [round(float(v)) for v in torch.linspace(0, num_conv_src, num_conv - num_conv_src)]
        dirac = torch.nn.init.dirac_(torch.empty(num_feat_src, num_feat_src, 3, 3))
        identity = (dirac, torch.zeros(num_feat_src), torch.ones(num_feat_src))
        convs = [c for i, conv in enumerate(convs) for c in [conv] + [identity] * after.count(i)]
    layers = list(convs) + [last]
    kept_in = None
    for i, (weight, bias, *slope) in enumerate(layers[:-1]):
        kept = top_channels(layers[i + 1][0].detach().abs().sum((0, 2, 3)), num_feat, f"body conv {i}") \
            if num_feat < num_feat_src else None
        layers[i] = (_take(_take(weight, kept, 0), kept_in, 1), _take(bias, kept, 0), _take(slope[0], kept, 0))
        kept_in = kept
    layers[-1] = (_take(last[0], kept_in, 1), last[1])
    out = {}
    for i, layer in enumerate(layers[:-1]):
        out.update({f"body.{2 * i}.weight": layer[0], f"body.{2 * i}.bias": layer[1],
                    f"body.{2 * i + 1}.weight": layer[2]})
    out.update({f"body.{2 * len(layers) - 2}.weight": layers[-1][0], f"body.{2 * len(layers) - 2}.bias": layers[-1][1]})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# --- shared pieces --------------------------------------------------------------------------------------------------

def filter_l1(weight: Tensor) -> Tensor:
    """L1 norm of each output filter of a conv weight (out, in, kh, kw): the filter-pruning importance."""
    return weight.detach().abs().flatten(1).sum(1)


def top_channels(score: Tensor, n: int, what: str = "a layer") -> Tensor:
    """Indices of the ``n`` highest scores, sorted ascending; ties go to the lower index, so cuts are deterministic."""
    if not 1 <= n <= score.numel():
        raise GankdError(f"cannot keep {n} of the {score.numel()} channels of {what}: a teacher-initialised student "
                         "can only be narrower than its teacher")
    return torch.argsort(score, descending=True, stable=True)[:n].sort().values


def _relative(score: Tensor) -> Tensor:
    return score / score.mean().clamp_min(1e-12)  # an all-zero layer votes for nothing instead of giving NaN


def _take(tensor: Tensor, index: Tensor | None, dim: int) -> Tensor:
    return tensor if index is None else tensor.index_select(dim, index)


def _conv(state: dict[str, Tensor], name: str, kept_out: Tensor | None,
          kept_in: Tensor | None) -> dict[str, Tensor]:
    """A plain conv cut to ``kept_out`` filters over ``kept_in`` input channels (None: all); the bias follows."""
    out = {f"{name}.weight": _take(_take(state[f"{name}.weight"], kept_out, 0), kept_in, 1)}
    if f"{name}.bias" in state:
        out[f"{name}.bias"] = _take(state[f"{name}.bias"], kept_out, 0)
    return out


def _unshuffle(teacher: RRDBNet, x: Tensor) -> Tensor:
    return F.pixel_unshuffle(x, teacher.unshuffle) if teacher.unshuffle > 1 else x


def _output_with_blocks(teacher: RRDBNet, feat: Tensor, keep: Sequence[int]) -> Tensor:
    # RRDBNet.forward from conv_first's output on, with every block outside ``keep`` replaced by the identity.
    trunk = feat
    for index in keep:
        trunk = teacher.body[index](trunk)
    return teacher.upsample(feat + teacher.conv_body(trunk))


def _psnr(output: Tensor, target: Tensor) -> float:
    return psnr_db(F.mse_loss(output.float(), target.float()).item())  # data range 1: gankd models work in [0, 1]


def _cpu_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _check_rrdbnet(teacher: object) -> None:
    if not isinstance(teacher, RRDBNet):
        raise GankdError(f"block and channel cuts need an RRDBNet teacher, not {_describe(teacher)}")


def _check_count(k: int, n_total: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= n_total:
        raise GankdError(f"the number of blocks to keep must be between 1 and {n_total}, got {k!r}")


def _describe(obj: object) -> str:
    return f"a tensor of shape {list(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__
