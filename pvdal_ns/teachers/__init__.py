"""Teachers: every source of distillation targets behind one interface (docs/design.md, "Teachers").

:mod:`.base` the interface (:class:`Teacher`; the :class:`~pvdal_ns.model_components.teacher_batch.TeacherBatch` it
gives and its capability flags are data types below the model); :mod:`.pvd` pvdal-* teachers; :mod:`.stock` nerfacto,
instant-ngp, tensorf, vanilla-nerf and splatfacto; :mod:`.cache` the teacher cache (serial mode); :mod:`.registry`
the table of families and :func:`load_teacher`. A run's config.yml is read by
:mod:`pvdal_ns.utils.run_config`.
"""

from pvdal_ns.teachers.base import ModelTeacher, Teacher
from pvdal_ns.teachers.cache import TeacherCache, cache_nbytes, write_cache
from pvdal_ns.teachers.registry import TEACHER_FAMILIES, check_teacher_run, load_teacher, teacher_contraction

__all__ = [
    "ModelTeacher",
    "Teacher",
    "TeacherCache",
    "cache_nbytes",
    "write_cache",
    "TEACHER_FAMILIES",
    "check_teacher_run",
    "load_teacher",
    "teacher_contraction",
]
