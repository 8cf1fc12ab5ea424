"""What differs between the three tasks; the loop, the stages, the checkpoints and the report skeleton are shared.

A task owns the data a step sees and the validation of a generator:

- ``sr`` (Real-ESRGAN): G(lr) → hr. A fixed pool of HR crops and their LR versions; validation crops of held-out
  photos; PSNR to the teacher and to the ground truth, FID to the HR crops when the offline Inception is installed.
- ``face_sr`` (GCFSR): G(lq, scale) → face. The LQ face is made the GCFSR way (bicubic down by the factor, back up
  to the output size, in [-1, 1]); train factors come from ``recipe.factors``; validation runs every scale of
  ``recipe.val_scales`` and model selection uses their mean.
- ``generate`` (StyleGAN2): G(z) → image. Real images are what the discriminator sees; z is drawn per step from a
  seed fixed by (run seed, stage, epoch, batch), so a resumed run replays the same latents. Validation uses a fixed
  set of latents: FID to the real set, the sharpness (variance of the Laplacian) and diversity of the samples, and
  MSE/PSNR to the teacher for the same z.

Every task builds :class:`~gankd.distill.train.stages.Batch` objects whose ``inputs`` are what G takes, so one
``stages.step`` trains all three.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gankd.distill.data import crops, images, teacher_cache
from gankd.distill.errors import GankdError
from gankd.distill.models.folder import ModelConfig

from .recipe import Recipe
from .stages import Batch


def pick_metric(recipe: Recipe, has_teacher: bool, device: torch.device, log, has_gt: bool = False
                ) -> tuple[str, object]:
    """("fid", scorer) when the offline Inception is there (and not ruled out), else PSNR to the teacher (or to
    the ground truth when a restoration run has no teacher), else "last" (a generator trained from scratch without
    the Inception: the latest is kept)."""
    from gankd.distill import metrics

    available, why = metrics.FidScorer.available()
    if recipe.select_by == "fid" and not available:
        raise GankdError(f"select_by: fid, but {why}")
    if recipe.select_by == "fid" or (recipe.select_by == "auto" and available):
        return "fid", metrics.FidScorer.load(device=str(device))
    metric = "psnr_teacher" if has_teacher else "psnr_gt" if has_gt else "last"
    if recipe.select_by == "auto":
        log(f"notice: {why}; " + {"psnr_teacher": "the best generator is chosen by PSNR to the teacher",
                                  "psnr_gt": "the best generator is chosen by PSNR to the ground truth",
                                  "last": "the latest generator is kept"}[metric])
    return metric, None


@torch.no_grad()
def predict(model: nn.Module, inputs: tuple[Tensor, ...], batch_size: int, device: torch.device) -> Tensor:
    model.eval()
    n = len(inputs[0])
    outs = [model(*(x[i:i + batch_size].to(device) for x in inputs)).cpu() for i in range(0, n, batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def _teacher_outputs(teacher: nn.Module | None, inputs: tuple[Tensor, ...], device: torch.device
                     ) -> tuple[Tensor | None, Tensor | None]:
    if teacher is None:
        return None, None
    out, feats = teacher.forward_with_features(*(x.to(device) for x in inputs))
    return out.clone(), feats[-1].clone()


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] images to [0, 1] (what PSNR and the Inception read)."""
    return ((x + 1) / 2).clamp(0, 1)


class Task:
    kind: str
    input_range: tuple[float, float]
    metric: str  # "fid" (lower is better) | "psnr_teacher" (higher) | "last" (the latest is kept)

    def __len__(self) -> int:  # items in one epoch
        raise NotImplementedError

    def batch(self, indices: Tensor, seed: int, step: int) -> Batch:
        raise NotImplementedError

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def validate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def better(self, score: float, best: float | None) -> bool:
        if self.metric == "last":
            return True
        return best is None or (score < best if self.metric == "fid" else score > best)

    def score(self, scores: dict[str, float]) -> float:
        return 0.0 if self.metric == "last" else scores[self.metric]

    def discriminator_config(self, recipe: Recipe, width: float, provenance: dict) -> ModelConfig:
        """The discriminator of this task's family: ``width`` scales the teacher discriminator's channels."""
        raise NotImplementedError


# --- sr ---------------------------------------------------------------------------------------------------------


def _images(source: str, split: str) -> list[Tensor]:
    if source == "sample":
        return [image for _, image in images.sample_images(split)]
    if source == "sample_large":  # train_images only: the larger embedded pool
        return [image for _, image in images.sample_images(f"{split}_large")]
    return [images.load_image(path) for path in images.list_images(source)]


class SRTask(Task):
    kind = "sr"
    input_range = (0.0, 1.0)

    def __init__(self, recipe: Recipe, teacher: nn.Module, device: torch.device, log):
        self.recipe, self.teacher, self.device = recipe, teacher, device
        self.scale = teacher.gankd_config.scale
        self.train = crops.CropPool.build(_images(recipe.train_images, "train"), count=recipe.train_crops,
                                          hr_size=recipe.hr_size, scale=self.scale, degradation=recipe.degradation,
                                          seed=recipe.seed, augment=recipe.augment, mix=recipe.photo_mix(),
                                          min_texture=recipe.min_texture)
        self.val = sr_validation_pool(recipe, self.scale)
        self.train_teacher = None
        if recipe.cache_teacher:
            log(f"caching teacher outputs for {len(self.train)} train crops (the teacher is frozen in every stage)")
            self.train_teacher = teacher_cache.cache_teacher(teacher, self.train.lr, recipe.batch_size,
                                                             recipe.max_cache_mb, recipe.teacher_cache_dir)
        self.val_teacher_out, _ = teacher_cache.cache_teacher(teacher, self.val.lr, recipe.batch_size,
                                                              recipe.max_cache_mb, recipe.teacher_cache_dir)
        self.metric, self.fid = pick_metric(recipe, True, device, log)
        self.real_feats = self.fid.features(self.val.hr) if self.fid else None

    def __len__(self) -> int:
        return len(self.train)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (self.train.lr[:n],)

    def batch(self, indices: Tensor, seed: int, step: int) -> Batch:
        lr, hr = self.train.lr[indices].to(self.device), self.train.hr[indices].to(self.device)
        if self.train_teacher is not None:
            out, feat = (t[indices].to(self.device) for t in self.train_teacher)
        else:
            out, feat = _teacher_outputs(self.teacher, (lr,), self.device)
        return Batch(inputs=(lr,), hr=hr, teacher_out=out, teacher_feat=feat, seed=seed, step=step)

    def validate(self, model: nn.Module) -> dict[str, float]:
        from gankd.distill import metrics

        out = predict(model, (self.val.lr,), self.recipe.batch_size, self.device).clamp(0, 1)
        teacher = self.val_teacher_out.clamp(0, 1)
        scores = {"psnr_teacher": metrics.mean_psnr(out, teacher),
                  # sharpness relative to the teacher's: a student cannot win PSNR by blurring unseen
                  "vol_teacher": metrics.laplacian_variance(out) / max(metrics.laplacian_variance(teacher), 1e-12),
                  "psnr_gt": metrics.mean_psnr(out, self.val.hr)}
        for part, rows in clean_and_degraded(self.val.kinds).items():  # a photo mix: scored apart as well
            scores[f"psnr_teacher_{part}"] = metrics.mean_psnr(out[rows], teacher[rows])
            scores[f"vol_teacher_{part}"] = (metrics.laplacian_variance(out[rows])
                                             / max(metrics.laplacian_variance(teacher[rows]), 1e-12))
        if self.fid:
            scores["fid"] = self.fid.fid(self.fid.features(out), self.real_feats)
        return scores

    def discriminator_config(self, recipe: Recipe, width: float, provenance: dict) -> ModelConfig:
        return sr_discriminator_config(recipe, width, provenance)


def clean_and_degraded(kinds: tuple[str, ...]) -> dict[str, Tensor]:
    """Row indices of the clean and the degraded crops of a pool that holds both (a photo mix); else {}."""
    if len(set(kinds)) < 2:
        return {}
    clean = torch.tensor([kind == "clean" for kind in kinds])
    return {"clean": clean.nonzero()[:, 0], "degraded": (~clean).nonzero()[:, 0]}


def sr_validation_pool(recipe: Recipe, scale: int) -> crops.CropPool:
    """The fixed validation crops of an SR recipe (the run's, ``compare --reference``'s)."""
    return crops.validation_pool(_images(recipe.val_images, "validation"), hr_size=recipe.hr_size, scale=scale,
                                 degradation=recipe.degradation, seed=recipe.seed + 1,
                                 per_image=recipe.val_crops_per_image, mix=recipe.photo_mix())


def validation_crops_for(recipe: Recipe, teacher: nn.Module) -> tuple[Tensor, Tensor]:
    """The LR validation crops of an SR recipe and the teacher's outputs on them, built as a run builds them."""
    val = sr_validation_pool(recipe, teacher.gankd_config.scale)
    out, _ = teacher_cache.cache_teacher(teacher, val.lr, recipe.batch_size, recipe.max_cache_mb)
    return val.lr, out


def sr_discriminator_config(recipe: Recipe, width: float, provenance: dict) -> ModelConfig:
    """Real-ESRGAN's U-Net discriminator with ``width`` x ``teacher_d_feat`` channels."""
    num_feat = max(1, round(recipe.teacher_d_feat * width))
    return ModelConfig(arch="unet_discriminator_sn", kwargs={"num_in_ch": 3, "num_feat": num_feat}, task="sr",
                       scale=None, width=width, provenance=provenance)


# --- generate ---------------------------------------------------------------------------------------------------


def _square(image: Tensor, size: int) -> Tensor:
    """Centre square crop resized to size×size (bicubic, antialiased), in [0, 1]."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[:, top:top + side, left:left + side].unsqueeze(0)
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(0, 1)[0]


def real_faces(source: str, size: int) -> Tensor:
    """The real set of a generation run in [0, 1]: ``sample`` = scikit-image's 100 LFW faces, else a folder."""
    if source == "sample":
        from gankd.distill.data.faces import lfw_faces

        return lfw_faces(size)
    return torch.stack([_square(images.load_image(path), size) for path in images.list_images(source)])


class GenerateTask(Task):
    kind = "generate"
    input_range = (-1.0, 1.0)

    def __init__(self, recipe: Recipe, teacher: nn.Module | None, g_config: ModelConfig, device: torch.device, log):
        self.recipe, self.teacher, self.device = recipe, teacher, device
        from gankd.distill.models.registry import make_config

        arch = make_config(g_config.arch, g_config.kwargs)
        self.size, self.style_dim = arch.size, arch.style_dim
        self.real = real_faces(recipe.train_images, self.size) * 2 - 1
        if len(self.real) < 2:
            raise GankdError(f"train_images: {recipe.train_images} holds {len(self.real)} image(s); need at least 2")
        self.val_z = torch.randn(recipe.val_samples, self.style_dim,
                                 generator=torch.Generator().manual_seed(recipe.seed + 1))
        self.val_teacher_out = predict(teacher, (self.val_z,), recipe.batch_size, device) if teacher else None
        self.metric, self.fid = pick_metric(recipe, teacher is not None, device, log)
        self.real_feats = self.fid.features(_to_unit(self.real)) if self.fid else None
        log(f"generation data: {len(self.real)} real images at {self.size}² "
            f"({'scikit-image LFW faces' if recipe.train_images == 'sample' else recipe.train_images})")

    def __len__(self) -> int:
        return len(self.real)

    def latents(self, n: int, seed: int) -> Tensor:
        return torch.randn(n, self.style_dim, generator=torch.Generator().manual_seed(seed))

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return (self.latents(n, 0),)

    def batch(self, indices: Tensor, seed: int, step: int) -> Batch:
        z = self.latents(len(indices), seed).to(self.device)
        out, feat = _teacher_outputs(self.teacher, (z,), self.device)
        return Batch(inputs=(z,), hr=self.real[indices].to(self.device), teacher_out=out, teacher_feat=feat,
                     seed=seed, step=step)

    def samples(self, model: nn.Module) -> Tensor:
        return predict(model, (self.val_z,), self.recipe.batch_size, self.device)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return self.score_samples(self.samples(model))

    def score_samples(self, out: Tensor) -> dict[str, float]:
        from gankd.distill import metrics

        unit = _to_unit(out)
        scores = {}
        if self.val_teacher_out is not None:
            scores["mse_teacher"] = torch.mean((out - self.val_teacher_out) ** 2).item()
            scores["psnr_teacher"] = metrics.mean_psnr(unit, _to_unit(self.val_teacher_out))
        scores["sharpness"] = metrics.laplacian_variance(unit)
        if self.fid:
            feats = self.fid.features(unit)
            scores["fid"] = self.fid.fid(feats, self.real_feats)
            scores["diversity"] = metrics.feature_diversity(feats)
        return scores

    def discriminator_config(self, recipe: Recipe, width: float, provenance: dict) -> ModelConfig:
        return _stylegan2_d_config(self.size, recipe, width, "generate", provenance)


def _stylegan2_d_config(size: int, recipe: Recipe, width: float, task: str, provenance: dict) -> ModelConfig:
    # GCFSR trains its D without the minibatch-stddev channel (the official StyleGAN2Discriminator_no_std)
    stddev = {"stddev_group": 0} if task == "face_sr" else {}
    return ModelConfig(arch="stylegan2_discriminator",
                       kwargs={"size": size, "channel_multiplier": recipe.d_channel_multiplier,
                               "narrow": recipe.teacher_d_narrow * width, **stddev},
                       task=task, scale=None, input_range=(-1.0, 1.0), width=width, provenance=provenance)


# --- face_sr ----------------------------------------------------------------------------------------------------


class FaceSRTask(Task):
    kind = "face_sr"
    input_range = (-1.0, 1.0)

    def __init__(self, recipe: Recipe, teacher: nn.Module | None, g_config: ModelConfig, device: torch.device, log):
        from gankd.distill.data.faces import gcfsr_lq
        from gankd.distill.models.registry import make_config

        self.recipe, self.teacher, self.device = recipe, teacher, device
        self.size = make_config(g_config.arch, g_config.kwargs).out_size
        for key in ("factors", "val_scales"):
            bad = [f for f in getattr(recipe, key) if self.size % f]
            if bad:
                raise GankdError(f"{key}: factor {bad[0]} does not divide the output size {self.size} "
                                 "(the LQ face is the output bicubic-downscaled by the factor)")
        train = self._faces(recipe.train_images, "train")
        rng = torch.Generator().manual_seed(recipe.seed)
        pick = torch.randint(len(train), (recipe.train_crops,), generator=rng)
        flips = torch.rand(recipe.train_crops, generator=rng) < 0.5
        hr = torch.stack([train[i].flip(-1) if f else train[i] for i, f in zip(pick.tolist(), flips.tolist())])
        factors = torch.tensor(recipe.factors, dtype=torch.float32)
        scale = factors[torch.randint(len(factors), (recipe.train_crops,), generator=rng)]
        self.train_hr = hr * 2 - 1
        self.train_scale = scale
        self.train_lq = torch.empty_like(self.train_hr)
        for factor in scale.unique().tolist():  # one resize per factor, not per face
            picked = scale == factor
            self.train_lq[picked] = gcfsr_lq(self.train_hr[picked], int(factor))
        val = self._faces(recipe.val_images, "validation")
        self.val_hr = torch.stack(val) * 2 - 1
        self.val_lq = {s: gcfsr_lq(self.val_hr, s) for s in recipe.val_scales}
        self.val_teacher_out = {s: predict(teacher, self._val_inputs(s), recipe.batch_size, device)
                                for s in recipe.val_scales} if teacher else None
        self.train_teacher = None
        if teacher is not None and recipe.cache_teacher:
            log(f"caching teacher outputs for {len(hr)} train faces (the teacher is frozen in every stage)")
            self.train_teacher = teacher_cache.cache_teacher(teacher, (self.train_lq, self.train_scale),
                                                             recipe.batch_size, recipe.max_cache_mb)
        self.metric, self.fid = pick_metric(recipe, teacher is not None, device, log, has_gt=True)
        self.real_feats = self.fid.features(_to_unit(self.val_hr)) if self.fid else None
        log(f"face data: {len(train)} train / {len(val)} validation faces at {self.size}², train factors "
            f"{sorted(set(recipe.factors))}, validation scales {list(recipe.val_scales)}")

    def _faces(self, source: str, split: str) -> list[Tensor]:
        if source == "sample":
            from gankd.distill.data.faces import face_images

            return face_images(split, self.size)
        return [_square(images.load_image(path), self.size) for path in images.list_images(source)]

    def _val_inputs(self, scale: int) -> tuple[Tensor, Tensor]:
        return self.val_lq[scale], torch.full((len(self.val_hr),), float(scale))

    def __len__(self) -> int:
        return len(self.train_hr)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return self.train_lq[:n], self.train_scale[:n]

    def batch(self, indices: Tensor, seed: int, step: int) -> Batch:
        inputs = (self.train_lq[indices].to(self.device), self.train_scale[indices].to(self.device))
        if self.train_teacher is not None:
            out, feat = (t[indices].to(self.device) for t in self.train_teacher)
        else:
            out, feat = _teacher_outputs(self.teacher, inputs, self.device)
        return Batch(inputs=inputs, hr=self.train_hr[indices].to(self.device), teacher_out=out, teacher_feat=feat,
                     seed=seed, step=step)

    def outputs(self, model: nn.Module) -> dict[int, Tensor]:
        return {s: predict(model, self._val_inputs(s), self.recipe.batch_size, self.device)
                for s in self.recipe.val_scales}

    def validate(self, model: nn.Module) -> dict[str, float]:
        return self.score_outputs(self.outputs(model))

    def score_outputs(self, outs: dict[int, Tensor]) -> dict[str, float]:
        from gankd.distill import metrics

        scores: dict[str, float] = {}
        for s, out in outs.items():
            unit = _to_unit(out)
            if self.val_teacher_out is not None:
                scores[f"psnr_teacher_x{s}"] = metrics.mean_psnr(unit, _to_unit(self.val_teacher_out[s]))
            scores[f"psnr_gt_x{s}"] = metrics.mean_psnr(unit, _to_unit(self.val_hr))
            if self.fid:
                scores[f"fid_x{s}"] = self.fid.fid(self.fid.features(unit), self.real_feats)
        for key in ("psnr_teacher", "psnr_gt", "fid"):
            values = [scores[f"{key}_x{s}"] for s in outs if f"{key}_x{s}" in scores]
            if values:
                scores[key] = sum(values) / len(values)
        return scores

    def discriminator_config(self, recipe: Recipe, width: float, provenance: dict) -> ModelConfig:
        return _stylegan2_d_config(self.size, recipe, width, "face_sr", provenance)


def make_task(recipe: Recipe, teacher: nn.Module | None, g_config: ModelConfig, device: torch.device, log) -> Task:
    if g_config.task == "sr":
        return SRTask(recipe, teacher, device, log)
    if g_config.task == "generate":
        return GenerateTask(recipe, teacher, g_config, device, log)
    return FaceSRTask(recipe, teacher, g_config, device, log)
