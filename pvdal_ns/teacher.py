"""Load a trained checkpoint as a frozen teacher, and query it at shared sample points.

The loader reads ``config.yml`` and the newest checkpoint beside it, builds the model from the
checkpoint alone (no images, no dataset, independent of the working directory), and hands it to an
adapter for its model family. Only pvdal-* teachers have an adapter so far; the dispatch table is where
stock nerfstudio families plug in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Type, Union

import torch
import yaml
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import UniformSampler
from torch import Tensor

from pvdal_ns.checkpoints import fill_missing_defaults, load_checkpoint, model_state
from pvdal_ns.fields import PointOutputs
from pvdal_ns.model import PVDModel, PVDModelConfig
from pvdal_ns.occupancy import OccupancyGrid


class TeacherLoadError(Exception):
    """A teacher config or checkpoint that cannot be used; the message is one line for the user."""


@dataclass
class TeacherBatch:
    """The teacher's view of one batch of rays, at the sample points it shares with the student.

    Attributes:
        ray_samples: RaySamples [R, S] (uniform, jittered) along the rays.
        mask: Bool[Tensor, "R S"], samples in the teacher's occupied cells; only these are evaluated.
        points: PointOutputs at the M = mask.sum() occupied samples.
        weights: Float[Tensor, "R S 1"], volume-rendering weights (Eq. 12 terms).
        rgb: Float[Tensor, "R 3"], rendered colour composited on the batch's background.
        accumulation: Float[Tensor, "R 1"], opacity of each ray.
    """

    ray_samples: RaySamples
    mask: Tensor
    points: PointOutputs
    weights: Tensor
    rgb: Tensor
    accumulation: Tensor


class Teacher:
    """A frozen pvdal-* model used as teacher. Not an ``nn.Module`` on purpose: it stays out of the
    student's checkpoints, parameter groups and ``train()``/``eval()`` switches.

    Args:
        model: the trained model (set to eval mode, gradients off).
        source: the config path it came from (for messages and reports).
    """

    def __init__(self, model: PVDModel, source: Path) -> None:
        self.model = model.eval().requires_grad_(False)
        self.source = source
        # Jittered sample positions along each ray, independent of the frozen model's eval mode.
        self.sampler = UniformSampler(num_samples=model.config.num_samples, train_stratified=True).train()

    @property
    def has_volume_feature(self) -> bool:
        """True when the teacher exposes the 16-d ϕ¹ volume feature."""
        return self.model.field.has_volume_feature

    @property
    def occupancy_grid(self) -> OccupancyGrid:
        """The grid whose occupied cells decide the shared sample points."""
        return self.model.occupancy_grid

    @property
    def name(self) -> str:
        """Short name of the teacher's architecture (e.g. "VMField")."""
        return type(self.model.field).__name__

    @torch.no_grad()
    def render(self, ray_bundle: RayBundle, background: Float[Tensor, "R 3"]) -> TeacherBatch:
        """Sample the rays through the teacher's occupancy grid, evaluate and render them.

        Args:
            ray_bundle: R rays in world coordinates (nears/fars are set here from the scene box).
            background: per-ray background colour in [0, 1], shared with the student.
        """
        ray_samples, mask = self.model.sample(ray_bundle, self.sampler)
        points = self.model.query(ray_samples, mask)
        out = self.model.composite(ray_samples, mask, points, background)
        return TeacherBatch(ray_samples, mask, points, out["weights"], out["rgb"], out["accumulation"])


def _pvd_teacher(config, state: Dict[str, Tensor], step: int, device: Union[str, torch.device], source: Path) -> Teacher:
    aabb = state.get("field.aabb")
    if aabb is None:
        raise TeacherLoadError(f"checkpoint of {source} has no field.aabb: it was not written by a pvdal-* model")
    model = config.pipeline.model.setup(scene_box=SceneBox(aabb=aabb), num_train_data=1, metadata={})
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TeacherLoadError(f"checkpoint of {source} does not match its config.yml ({first})") from None
    model.update_to_step(step)
    return Teacher(model.to(device), source)


TEACHER_ADAPTERS: Dict[Type, Callable[..., Teacher]] = {PVDModelConfig: _pvd_teacher}
"""Model-config class → adapter building a :class:`Teacher` from a config and its model state."""


def read_trainer_config(config_path: Path):
    """Read a nerfstudio ``config.yml``; raises TeacherLoadError with a one-line reason."""
    from nerfstudio.engine.trainer import TrainerConfig

    if not config_path.is_file():
        what = "is a directory" if config_path.is_dir() else "does not exist"
        raise TeacherLoadError(
            f"teacher config {config_path} {what}: pass the config.yml that ns-train wrote "
            "(outputs/<experiment>/<method>/<timestamp>/config.yml)"
        )
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as err:  # yaml errors, unknown classes of another plugin, unreadable files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TeacherLoadError(f"teacher config {config_path} is not a readable nerfstudio config: {first}") from None
    if not isinstance(config, TrainerConfig):
        raise TeacherLoadError(f"teacher config {config_path} is not a nerfstudio training config (config.yml)")
    return fill_missing_defaults(config)


def load_teacher(config_path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Teacher:
    """Load the newest checkpoint of a training run as a frozen :class:`Teacher`.

    Args:
        config_path: the run's ``config.yml``; its checkpoints are found beside it, whatever the
            working directory.
        device: where the teacher runs.

    Raises:
        TeacherLoadError: missing or unreadable config, no checkpoint, an unsupported model family,
            or a checkpoint that does not match the config.
    """
    config_path = Path(config_path).expanduser().resolve()
    config = read_trainer_config(config_path)
    adapter = next((a for t, a in TEACHER_ADAPTERS.items() if isinstance(config.pipeline.model, t)), None)
    if adapter is None:
        raise TeacherLoadError(
            f"teacher {config_path} is a '{config.method_name}' model; supported teachers: pvdal-* methods"
        )
    ckpt_dir = config_path.parent / config.relative_model_dir
    ckpts = sorted(ckpt_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not ckpts:
        raise TeacherLoadError(f"teacher {config_path} has no checkpoint (no step-*.ckpt in {ckpt_dir})")
    try:
        loaded = load_checkpoint(ckpts[-1])
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TeacherLoadError(f"teacher checkpoint {ckpts[-1]} cannot be read: {first}") from None
    return adapter(config, model_state(loaded), int(loaded.get("step", 0)), device, config_path)

