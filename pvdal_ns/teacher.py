"""Load a trained checkpoint as a frozen teacher, and query it at shared sample points.

The loader reads ``config.yml`` and the newest checkpoint beside it, builds the model from the
checkpoint alone (no images, no dataset, independent of the working directory), and hands it to the
adapter of its model family in :data:`TEACHER_ADAPTERS`: pvdal-* models here, stock nerfstudio
families in :mod:`pvdal_ns.stock_teachers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Type, Union

import torch
import yaml
from jaxtyping import Bool, Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from torch import Tensor

from pvdal_ns.checkpoints import fill_missing_defaults, load_checkpoint, model_state
from pvdal_ns.fields import PointOutputs
from pvdal_ns.model import PVDModel, PVDModelConfig, composite
from pvdal_ns.occupancy import OccupancyGrid, sample_occupied


class TeacherLoadError(Exception):
    """A teacher config or checkpoint that cannot be used; the message is one line for the user."""


@dataclass
class TeacherBatch:
    """The teacher's view of one batch of rays, at the sample points it shares with the student.

    Attributes:
        ray_samples: RaySamples [R, S] (uniform, jittered) along the rays.
        mask: Bool[Tensor, "R S"], samples in the teacher's occupied cells; only these are evaluated.
        points: PointOutputs at the M = mask.sum() occupied samples; None when distilling from renders
            only (:attr:`Teacher.renders_only`).
        weights: Float[Tensor, "R S 1"], volume-rendering weights (Eq. 12 terms); None from renders only.
        rgb: Float[Tensor, "R 3"], rendered colour composited on the batch's background.
        accumulation: Float[Tensor, "R 1"], opacity of each ray.
    """

    ray_samples: RaySamples
    mask: Tensor
    points: Optional[PointOutputs]
    weights: Optional[Tensor]
    rgb: Tensor
    accumulation: Tensor


@dataclass
class TeacherImages:
    """The teacher's renders of whole cameras, for distillation from renders only.

    Attributes:
        rgb: Float[Tensor, "N H W 3"], colour premultiplied by opacity (i.e. on a black background).
        accumulation: Float[Tensor, "N H W 1"], opacity of each pixel's ray.
    """

    rgb: Tensor
    accumulation: Tensor

    def composite(self, pixels: Int[Tensor, "R 3"], background: Float[Tensor, "R 3"]) -> Tuple[Tensor, Tensor]:
        """RGB Float[Tensor, "R 3"] of the (camera, row, column) ``pixels`` on ``background``, and their
        accumulation Float[Tensor, "R 1"]."""
        p = pixels.to(self.rgb.device)
        rgb, accumulation = self.rgb[p[:, 0], p[:, 1], p[:, 2]], self.accumulation[p[:, 0], p[:, 1], p[:, 2]]
        return rgb + (1.0 - accumulation) * background.to(rgb), accumulation


@dataclass
class Sampling:
    """Where a teacher without an occupancy grid of its own samples: the student's scene box, grid
    resolution, samples per ray and occupancy threshold (``PVDModelConfig`` fields of the same names)."""

    scene_box: SceneBox
    grid_resolution: int = 128
    num_samples: int = 192
    grid_threshold: float = 0.01

    @classmethod
    def of(cls, model: PVDModel) -> "Sampling":
        """The sampling settings of a student model."""
        c = model.config
        return cls(model.scene_box, c.grid_resolution, c.num_samples, c.grid_threshold)

    @property
    def step_size(self) -> float:
        """Distance between uniform samples (scene units): the box diagonal over ``num_samples``."""
        aabb = self.scene_box.aabb
        return float((aabb[1] - aabb[0]).norm() / self.num_samples)


class Teacher:
    """A frozen model used as teacher. Not an ``nn.Module`` on purpose: it stays out of the student's
    checkpoints, parameter groups and ``train()``/``eval()`` switches.

    Rays are clipped to ``scene_box``, sampled uniformly (jittered) and masked by ``occupancy_grid``;
    subclasses say what the model is at those points (:meth:`query`).

    Args:
        model: the trained nerfstudio model (set to eval mode, gradients off).
        source: the config path it came from (for messages and reports).
        occupancy_grid: the grid whose occupied cells decide the shared sample points.
        scene_box: the box rays are clipped to.
        num_samples: uniform samples per ray before masking.
    """

    has_volume_feature: bool = False
    """True when :meth:`query` returns the 16-d ϕ¹ volume feature (Eq. 6)."""
    renders_only: bool = False
    """True when the model has no field to query at points (splatfacto): it is distilled from its images
    (:meth:`render_images`) alone, and only L_rgb applies."""

    def __init__(self, model: torch.nn.Module, source: Path, occupancy_grid: OccupancyGrid, scene_box: SceneBox,
                 num_samples: int) -> None:
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.occupancy_grid = occupancy_grid
        self.collider = AABBBoxCollider(scene_box, near_plane=0.0)
        # Jittered sample positions along each ray, independent of the frozen model's eval mode.
        self.sampler = UniformSampler(num_samples=num_samples, train_stratified=True).train()
        self.renderer_rgb = RGBRenderer(background_color="white")

    @property
    def name(self) -> str:
        """Short name of the teacher's model family (e.g. "VMField", "nerfacto")."""
        return type(self.model).__name__

    def query(self, ray_samples: RaySamples, mask: Bool[Tensor, "R S"]) -> PointOutputs:
        """Density, colour and (where it exists) ϕ¹ at the M = mask.sum() masked samples."""
        raise NotImplementedError

    @torch.no_grad()
    def render(self, ray_bundle: RayBundle, background: Float[Tensor, "R 3"]) -> TeacherBatch:
        """Sample the rays through the occupancy grid, evaluate and render them.

        Args:
            ray_bundle: R rays in world coordinates (nears/fars are set here from the scene box).
            background: per-ray background colour in [0, 1], shared with the student.
        """
        ray_samples, mask = sample_occupied(self.collider(ray_bundle), self.sampler, self.occupancy_grid)
        points = self.query(ray_samples, mask)
        out = composite(ray_samples, mask, points, self.renderer_rgb, background)
        return TeacherBatch(ray_samples, mask, points, out["weights"], out["rgb"], out["accumulation"])

    @torch.no_grad()
    def render_images(self, cameras: Cameras, chunk: int = 1 << 14) -> TeacherImages:
        """Whole images of ``cameras`` (N of them, one size): here :meth:`render` of their pixel-centre rays,
        ``chunk`` rays at a time; renders-only teachers render them their own way."""
        rgbs, accumulations = [], []
        for i in range(len(cameras)):
            rays = cameras[i : i + 1].generate_rays(camera_indices=0).flatten()
            black = torch.zeros(min(chunk, len(rays)), 3, device=rays.origins.device)
            parts = [self.render(rays[j : j + chunk], black[: len(rays[j : j + chunk])]) for j in range(0, len(rays), chunk)]
            rgbs.append(torch.cat([p.rgb for p in parts]))
            accumulations.append(torch.cat([p.accumulation for p in parts]))
        height, width = int(cameras.height[0]), int(cameras.width[0])
        return TeacherImages(torch.stack(rgbs).view(-1, height, width, 3), torch.stack(accumulations).view(-1, height, width, 1))

    @torch.no_grad()
    def render_pixels(self, images: TeacherImages, pixels: Int[Tensor, "R 3"], ray_bundle: RayBundle,
                      background: Float[Tensor, "R 3"]) -> TeacherBatch:
        """Distillation from renders only: a batch whose colours come from ``images`` (the rays of
        ``ray_bundle`` are those of ``pixels``: camera, row, column) and whose sample points are the
        occupancy-masked samples the student is evaluated at; no point outputs, no weights."""
        ray_samples, mask = sample_occupied(self.collider(ray_bundle), self.sampler, self.occupancy_grid)
        rgb, accumulation = images.composite(pixels, background)
        return TeacherBatch(ray_samples, mask, None, None, rgb, accumulation)

    def render_camera(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """The teacher's image of one camera on a white background (CPU)."""
        images = self.render_images(camera)
        return (images.rgb + 1.0 - images.accumulation)[0].cpu()


class PVDTeacher(Teacher):
    """A pvdal-* model as teacher: its own occupancy grid, scene box and samples per ray."""

    model: PVDModel

    def __init__(self, model: PVDModel, source: Path) -> None:
        super().__init__(model, source, model.occupancy_grid, model.scene_box, model.config.num_samples)
        self.has_volume_feature = model.field.has_volume_feature

    @property
    def name(self) -> str:
        return type(self.model.field).__name__

    def query(self, ray_samples: RaySamples, mask: Tensor) -> PointOutputs:
        return self.model.query(ray_samples, mask)


def _pvd_teacher(config, state: Dict[str, Tensor], step: int, device: Union[str, torch.device], source: Path,
                 sampling: Optional[Sampling]) -> Teacher:
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
    return PVDTeacher(model.to(device), source)


Adapter = Callable[..., Teacher]
"""(config, model state, step, device, source path, Sampling or None) → Teacher."""

TEACHER_ADAPTERS: Dict[Type, Tuple[str, Adapter]] = {PVDModelConfig: ("pvdal-*", _pvd_teacher)}
"""Model-config class (subclasses included) → (family name, adapter building a :class:`Teacher`);
:mod:`pvdal_ns.stock_teachers` adds the stock nerfstudio families."""


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


def newest_checkpoint(config_path: Path, config) -> Path:
    """The newest ``step-*.ckpt`` of the run whose ``config.yml`` is ``config_path`` (the one a teacher loads).

    Raises:
        TeacherLoadError: the run has no checkpoint."""
    ckpt_dir = config_path.parent / config.relative_model_dir
    ckpts = sorted(ckpt_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not ckpts:
        raise TeacherLoadError(f"teacher {config_path} has no checkpoint (no step-*.ckpt in {ckpt_dir})")
    return ckpts[-1]


def load_teacher(config_path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 sampling: Optional[Sampling] = None) -> Teacher:
    """Load the newest checkpoint of a training run as a frozen :class:`Teacher`.

    Args:
        config_path: the run's ``config.yml``; its checkpoints are found beside it, whatever the
            working directory.
        device: where the teacher runs.
        sampling: the student's scene box and occupancy-grid settings; stock teachers (which have no
            compatible occupancy grid) build theirs with them. Required for stock teachers.

    Raises:
        TeacherLoadError: missing or unreadable config, no checkpoint, an unsupported model family,
            or a checkpoint that does not match the config.
    """
    import pvdal_ns.stock_teachers  # noqa: F401  (registers the stock families; imports their models)

    config_path = Path(config_path).expanduser().resolve()
    config = read_trainer_config(config_path)
    adapter = next((a for t, (_, a) in TEACHER_ADAPTERS.items() if isinstance(config.pipeline.model, t)), None)
    if adapter is None:
        supported = ", ".join(name for name, _ in TEACHER_ADAPTERS.values())
        raise TeacherLoadError(
            f"teacher {config_path} is a '{config.method_name}' model ({type(config.pipeline.model).__name__}); "
            f"supported teacher families: {supported}"
        )
    checkpoint = newest_checkpoint(config_path, config)
    try:
        loaded = load_checkpoint(checkpoint)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TeacherLoadError(f"teacher checkpoint {checkpoint} cannot be read: {first}") from None
    return adapter(config, model_state(loaded), int(loaded.get("step", 0)), device, config_path, sampling)
