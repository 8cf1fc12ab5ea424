"""gankd.distill: distillation, by role: ``models/`` (architectures, teacher import, students, model folders),
``data/``, ``train/`` (recipes, stages, the objective, the loop), ``report/`` and ``tools/`` (README "Layout").

Public API::

    from gankd.distill import load_model, save_model, build_student, load_config
    teacher = load_model("teachers/x4plus")
    student, config = build_student(teacher.gankd_config, width=0.25)
    save_model("students/c025", student, config)
"""

from gankd.distill.models import archs  # noqa: F401  (registers the architectures)
from gankd.distill.models.folder import ModelConfig, load_config, load_model, save_model
from gankd.distill.models.registry import create_model, get_arch, list_archs, register_arch
from gankd.distill.models.students import build_student, student_config

from .errors import GankdError

__all__ = [
    "GankdError",
    "ModelConfig",
    "build_student",
    "create_model",
    "get_arch",
    "list_archs",
    "load_config",
    "load_model",
    "register_arch",
    "save_model",
    "student_config",
]
