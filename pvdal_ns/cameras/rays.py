"""Rays of an epoch's pinhole cameras at given pixels, as nerfstudio's ``RayGenerator`` gives them, without the
per-camera-type loop of ``Cameras.generate_rays`` (its ``torch.unique`` of the types and masked writes each wait
for the device on a GPU; docs/design.md, "One sampler, packed samples").
"""

from __future__ import annotations

from typing import Union

import torch
from jaxtyping import Int
from nerfstudio.cameras.camera_utils import normalize_with_norm
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.ray_generators import RayGenerator
from torch import Tensor, nn


class PinholeRayGenerator(nn.Module):
    """nerfstudio's ``RayGenerator`` for cameras that are all perspective and undistorted (what novel poses of
    distillation are): the same rays, origins, unit directions, pixel areas, ``directions_norm`` metadata, in the
    same float operations, with shapes that never depend on the data.

    Args:
        cameras: N perspective cameras without distortion (checked once, here).

    Raises:
        ValueError: a camera is not perspective or has distortion (use :func:`ray_generator`, which falls back to
            nerfstudio's generator).
    """

    def __init__(self, cameras: Cameras) -> None:
        super().__init__()
        if not pinhole(cameras):
            raise ValueError("PinholeRayGenerator needs perspective cameras without distortion")
        flat = cameras.flatten()
        self.register_buffer("camera_to_worlds", flat.camera_to_worlds, persistent=False)
        self.register_buffer("intrinsics", torch.cat([flat.fx, flat.fy, flat.cx, flat.cy], -1), persistent=False)

    def forward(self, ray_indices: Int[Tensor, "R 3"]) -> RayBundle:
        """The rays of (camera, row, column) ``ray_indices``, through the pixel centres (nerfstudio's
        ``get_image_coords`` offset of 0.5), in world units."""
        c = ray_indices[:, 0]
        y = ray_indices[:, 1].float() + 0.5
        x = ray_indices[:, 2].float() + 0.5
        fx, fy, cx, cy = self.intrinsics[c].unbind(-1)
        coord = torch.stack([(x - cx) / fx, (y - cy) / fy], -1)
        coord_x_offset = torch.stack([(x - cx + 1) / fx, (y - cy) / fy], -1)
        coord_y_offset = torch.stack([(x - cx) / fx, (y - cy + 1) / fy], -1)
        coord_stack = torch.stack([coord, coord_x_offset, coord_y_offset], dim=0)
        coord_stack[..., 1] *= -1  # OpenCV to OpenGL, as nerfstudio
        directions_stack = torch.cat([coord_stack, -torch.ones_like(coord_stack[..., :1])], -1)
        c2w = self.camera_to_worlds[c]
        directions_stack = torch.sum(directions_stack[..., None, :] * c2w[..., :3, :3], dim=-1)
        directions_stack, directions_norm = normalize_with_norm(directions_stack, -1)
        directions = directions_stack[0]
        dx = torch.sqrt(torch.sum((directions - directions_stack[1]) ** 2, dim=-1))
        dy = torch.sqrt(torch.sum((directions - directions_stack[2]) ** 2, dim=-1))
        return RayBundle(origins=c2w[..., :3, 3], directions=directions, pixel_area=(dx * dy)[..., None],
                         camera_indices=c[:, None], metadata={"directions_norm": directions_norm[0].detach()})


def pinhole(cameras: Cameras) -> bool:
    """Whether every camera is perspective and undistorted (read on the host once, when an epoch's cameras are
    made)."""
    perspective = bool((cameras.camera_type == CameraType.PERSPECTIVE.value).all())
    distortion = cameras.distortion_params
    return perspective and (distortion is None or not bool(distortion.any()))


def ray_generator(cameras: Cameras) -> Union[PinholeRayGenerator, RayGenerator]:
    """The ray generator of ``cameras``' pixels on their device: :class:`PinholeRayGenerator` for perspective
    undistorted cameras, else nerfstudio's ``RayGenerator`` (its pixel grid is made on the CPU: moved with it)."""
    if pinhole(cameras):
        return PinholeRayGenerator(cameras).to(cameras.device)
    return RayGenerator(cameras).to(cameras.device)
