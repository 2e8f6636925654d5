"""The PVD model: any of the four fields behind occupancy-masked volume rendering.

A normal nerfstudio ``Model`` (trains on images, evaluates, renders in the viewer); during distillation
the ``DistillationPipeline`` evaluates its field at the teacher's sample points instead. Config-beside-
model layout follows nerfstudio's ``models/nerfacto.py`` and ``models/instant_ngp.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.models.base_model import Model, ModelConfig
from torch import Tensor, nn

from pvdal_ns.fields import PointOutputs, PVDField, PVDFieldConfig, VMFieldConfig
from pvdal_ns.metrics import image_metrics
from pvdal_ns.occupancy import OccupancyGrid, sample_occupied


@dataclass
class PVDModelConfig(ModelConfig):
    """Configuration of a PVD model (field, sampling, occupancy grid, background)."""

    _target: Type = field(default_factory=lambda: PVDModel)
    field: PVDFieldConfig = field(default_factory=VMFieldConfig)
    """The architecture (hash, VM, MLP or tensors) and its sizes."""
    num_samples: int = 192
    """Uniform samples per ray across the scene box before occupancy masking."""
    grid_resolution: int = 128
    """Cells per axis of the occupancy grid (the authors use 128³)."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates when training from images."""
    grid_warmup_steps: int = 256
    """Steps during which every cell is re-evaluated at each update (nerfacc's warm-up)."""
    grid_threshold: float = 0.01
    """Occupancy threshold on σ·Δt."""
    grid_ema_decay: float = 0.95
    """Decay of the cells' running occupancy (nerfacc); lower prunes empty space sooner."""
    background_color: Literal["white", "black", "random"] = "white"
    """Background for training from images and for evaluation (blender scenes are composited on white)."""
    regularization_weight: float = 1.0
    """ω₅ of Eq. 7: scales the field's own L1 + TV terms."""
    enable_collider: bool = False
    """nerfstudio's near/far collider stays off: rays are always clipped to the scene box (AABBBoxCollider)."""


class PVDModel(Model):
    """Occupancy-masked volume rendering of a :class:`PVDField`.

    Args:
        config: PVDModelConfig.
        scene_box: nerfstudio ``SceneBox``; its aabb bounds the field, the grid and the rays.
        num_train_data: number of training images (unused; nerfstudio's ``Model`` signature).
    """

    config: PVDModelConfig
    field: PVDField

    def populate_modules(self) -> None:
        super().populate_modules()
        aabb = self.scene_box.aabb
        self.field = self.config.field.setup(aabb=aabb)
        self.occupancy_grid = OccupancyGrid(aabb, self.config.grid_resolution)
        self.occupancy_frozen = False
        """True while distilling: the grid then comes from the teacher and is not updated."""
        self.collider = AABBBoxCollider(self.scene_box, near_plane=0.0)
        self.sampler = UniformSampler(num_samples=self.config.num_samples)
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)

    @property
    def step_size(self) -> float:
        """Typical distance between samples (scene units): the box diagonal over ``num_samples``."""
        return float((self.scene_box.aabb[1] - self.scene_box.aabb[0]).norm() / self.config.num_samples)

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return self.field.param_groups()

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """Occupancy-grid updates from the field's own density (nerfacc EMA), unless frozen for distillation."""
        def update_grid(step: int) -> None:
            if self.occupancy_frozen:
                return
            self.occupancy_grid.update_every_n_steps(
                step=step,
                occ_eval_fn=self.occupancy_grid.occupancy_fn(self.field.density_at, self.step_size),
                occ_thre=self.config.grid_threshold,
                ema_decay=self.config.grid_ema_decay,
                warmup_steps=self.config.grid_warmup_steps,
                n=self.config.grid_update_every,
            )

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], update_grid)]

    # --- sampling and rendering ---------------------------------------------------------------------
    def sample(
        self, ray_bundle: RayBundle, sampler: Optional[UniformSampler] = None
    ) -> Tuple[RaySamples, Bool[Tensor, "R S"]]:
        """Occupancy-masked uniform samples of the rays, clipped to the scene box.

        Args:
            sampler: the sampler to use instead of the model's own (which jitters in training mode only).
        """
        return sample_occupied(self.collider(ray_bundle), sampler or self.sampler, self.occupancy_grid)

    def query(self, ray_samples: RaySamples, mask: Bool[Tensor, "R S"], with_rgb: bool = True) -> PointOutputs:
        """Field outputs at the occupied samples only (``[M, …]`` with M = mask.sum())."""
        directions = ray_samples.frustums.directions[mask] if with_rgb else None
        return self.field.query(ray_samples.frustums.get_positions()[mask], directions)

    def composite(
        self,
        ray_samples: RaySamples,
        mask: Bool[Tensor, "R S"],
        points: PointOutputs,
        background: Optional[Union[str, Float[Tensor, "R 3"]]] = None,
    ) -> Dict[str, Tensor]:
        """:func:`composite` with this model's RGB renderer (its background when ``background`` is None)."""
        return composite(ray_samples, mask, points, self.renderer_rgb, background)

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """Render R rays: ``rgb`` Float[Tensor, "R 3"], ``accumulation`` and ``depth`` (scene units)
        Float[Tensor, "R 1"], ``num_samples_per_ray`` (occupied samples evaluated)."""
        ray_samples, mask = self.sample(ray_bundle)
        outputs = self.composite(ray_samples, mask, self.query(ray_samples, mask))
        outputs.pop("weights")
        outputs["num_samples_per_ray"] = mask.sum(dim=-1, keepdim=True).float()
        return outputs

    # --- losses and metrics (training from images) -----------------------------------------------------
    def _gt(self, batch: Dict, outputs: Dict) -> Tuple[Tensor, Tensor]:
        image = batch["image"].to(self.device)
        return self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=image
        )

    def get_metrics_dict(self, outputs: Dict, batch: Dict) -> Dict[str, Tensor]:
        pred, gt = self._gt(batch, outputs)
        mse = torch.mean((pred - gt) ** 2)
        return {
            "psnr": -10.0 * torch.log10(mse.clamp(min=1e-10)),
            "occupied_fraction": torch.tensor(self.occupancy_grid.occupied_fraction),
        }

    def get_loss_dict(self, outputs: Dict, batch: Dict, metrics_dict: Optional[Dict] = None) -> Dict[str, Tensor]:
        """Training from images: MSE against ``batch["image"]`` + the field's L_reg (training only)."""
        pred, gt = self._gt(batch, outputs)
        loss = {"rgb_loss": torch.mean((pred - gt) ** 2)}
        if self.training:
            loss["regularization"] = self.config.regularization_weight * self.field.regularization_loss()
        return loss

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        pred = outputs["rgb"]
        metrics = {k: v for k, v in image_metrics(pred, gt).items() if v is not None}
        acc = outputs["accumulation"].expand_as(pred)
        return metrics, {"img": torch.cat([gt, pred], dim=1), "accumulation": acc}


_ACCUMULATION, _DEPTH = AccumulationRenderer(), DepthRenderer(method="expected")


def composite(
    ray_samples: RaySamples,
    mask: Bool[Tensor, "R S"],
    points: PointOutputs,
    renderer_rgb: RGBRenderer,
    background: Optional[Union[str, Float[Tensor, "R 3"]]] = None,
) -> Dict[str, Tensor]:
    """Volume rendering (Eq. 1) of point outputs given at the masked samples, with nerfstudio's renderers.

    Shared by students and every teacher, so both render the same samples the same way.

    Args:
        ray_samples: RaySamples [R, S]; mask: which of them ``points`` holds (M = mask.sum()).
        points: density and colour at the M samples (``rgb`` required).
        renderer_rgb: nerfstudio ``RGBRenderer``; ``background`` overrides its background colour.

    Returns:
        rgb Float[Tensor, "R 3"], accumulation and depth Float[Tensor, "R 1"] (depth in scene units),
        weights Float[Tensor, "R S 1"] (Eq. 12 terms).
    """
    density = torch.zeros((*mask.shape, 1), device=mask.device, dtype=points.raw_density.dtype)
    density[mask] = points.density
    weights = ray_samples.get_weights(density)
    rgb_samples = torch.zeros((*mask.shape, 3), device=mask.device, dtype=density.dtype)
    assert points.rgb is not None
    rgb_samples[mask] = points.rgb.to(density.dtype)
    return {
        "rgb": renderer_rgb(rgb_samples, weights, background_color=background),
        "accumulation": _ACCUMULATION(weights),
        "depth": _DEPTH(weights, ray_samples),
        "weights": weights,
    }
