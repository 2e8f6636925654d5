"""What active learning picked, as images (paper Fig. 7): the hard poses' frustums among the epoch's
poses, and a per-pixel heat map of the hard rays. Drawn from the epoch's cameras and the plain tensors
:class:`~pvdal_ns.active_learning.active_learning.EndedEpoch` holds, written as PNGs beside the run's checkpoints
(``<run>/active_learning/epoch-NNNN-{poses,rays}.png``) and logged to tensorboard through nerfstudio's
writer."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils import writer
from torch import Tensor

from pvdal_ns.active_learning.active_learning import EndedEpoch
from pvdal_ns.utils.files import pyplot, save_figure


def _figure_to_tensor(fig) -> Float[Tensor, "H W 3"]:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).float() / 255.0


def frustum_lines(c2w: Float[Tensor, "N 3 4"], fx: float, fy: float, width: float, height: float,
                  scale: float) -> Float[Tensor, "N 8 2 3"]:
    """The 8 line segments (4 edges from the centre, 4 of the image rectangle) of each camera's frustum
    (OpenGL convention: looking down −z), ``scale`` world units deep."""
    x, y = width / (2 * fx), height / (2 * fy)
    corners = torch.tensor([[-x, -y, -1.0], [x, -y, -1.0], [x, y, -1.0], [-x, y, -1.0]]) * scale
    world = corners @ c2w[:, :, :3].transpose(1, 2) + c2w[:, None, :, 3]  # [N, 4, 3]
    centre = c2w[:, None, :, 3].expand(-1, 4, -1)
    edges = torch.stack([centre, world], dim=2)
    rim = torch.stack([world, world.roll(-1, dims=1)], dim=2)
    return torch.cat([edges, rim], dim=1)


def hard_poses_figure(cameras: Cameras, centre: Float[Tensor, "3"], from_pool: Bool[Tensor, " N"], hardest: Tensor,
                      errors: Tensor, epoch: int):
    """Frustums of the epoch's poses: grey fresh, blue re-injected from the pool, red the hardest that
    entered the pool (darker = larger error). Fig. 7a.

    Args:
        cameras: the epoch's N cameras (poses and intrinsics).
        centre: the scene centre (world units).
        from_pool: which poses were re-injected from the pool.
        hardest: Int[Tensor, " K"] epoch pose ids that entered the pool.
        errors: Float[Tensor, " N"] mean squared RGB error of each epoch pose (NaN: not measured).

    Returns:
        a matplotlib figure.
    """
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    plt = pyplot()
    c2w = cameras.camera_to_worlds.detach().cpu()
    scale = 0.15 * float((c2w[:, :, 3] - centre).norm(dim=-1).mean())
    lines = frustum_lines(c2w, float(cameras.fx[0]), float(cameras.fy[0]), float(cameras.width[0]),
                          float(cameras.height[0]), scale)
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    top = float(errors[hardest].max()) if len(hardest) else 0.0  # 0: a student equal to its teacher
    hard = set(hardest.tolist())
    colours, widths = [], []
    for i in range(len(c2w)):
        if i in hard:
            colour, width = plt.cm.Reds(0.4 + 0.6 * (float(errors[i]) / top if top > 0 else 0.0)), 1.6
        else:
            colour, width = ("tab:blue", 0.9) if bool(from_pool[i]) else ("0.7", 0.5)
        colours += [colour] * lines.shape[1]
        widths += [width] * lines.shape[1]
    ax.add_collection3d(Line3DCollection(lines.reshape(-1, 2, 3).numpy(), colors=colours, linewidths=widths))
    ax.scatter(*centre.numpy(), color="k", s=10)
    half = float(lines.reshape(-1, 3).sub(centre).abs().max())
    for c, set_lim in zip(centre.tolist(), (ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(c - half, c + half)  # equal scale on all axes
    ax.set_box_aspect((1, 1, 1))
    ax.set_title(f"epoch {epoch}: hard poses (red), re-injected (blue)", fontsize=9)
    ax.set_axis_off()
    return fig


def hard_rays_figure(teacher_image: Tensor, pose_heat: Tensor, heat: Tensor, pose_id: int, epoch: int):
    """Teacher render of one pose with its hard rays, and the epoch's hard rays of all poses per pixel
    (Fig. 7b).

    Args:
        teacher_image: Float[Tensor, "H W 3"] in [0, 1].
        pose_heat: Float[Tensor, "H W"] hard rays of that pose per pixel.
        heat: Float[Tensor, "H W"] hard rays of all poses of the epoch per pixel.
    """
    fig, axes = pyplot().subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(teacher_image.clamp(0, 1).numpy())
    axes[0].set_title(f"teacher, pose {pose_id}", fontsize=9)
    axes[1].imshow(teacher_image.mean(dim=-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ys, xs = torch.nonzero(pose_heat, as_tuple=True)
    axes[1].scatter(xs.numpy(), ys.numpy(), s=2, c="red", linewidths=0)
    axes[1].set_title("its hard rays", fontsize=9)
    im = axes[2].imshow(heat.numpy(), cmap="inferno")
    axes[2].set_title(f"epoch {epoch}: hard rays per pixel, all poses", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _save(fig, directory: Path, epoch: int, name: str, step: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    image = _figure_to_tensor(fig)
    save_figure(directory / f"epoch-{epoch:04d}-{name}.png", fig, dpi=100)
    writer.put_image(name=f"active_learning/hard_{name}", image=image, step=step)


@torch.no_grad()
def write_epoch_images(directory: Path, ended: EndedEpoch, centre: Float[Tensor, "3"], hard_rays: bool,
                       render_pose: Callable[[int], Float[Tensor, "H W 3"]]) -> None:
    """The images of an epoch active learning closed (the pipeline's callback after the step that closed it):
    ``<directory>/epoch-NNNN-{poses,rays}.png``, written atomically, and the same images to nerfstudio's
    writer (tensorboard) at that step.

    Args:
        ended: the epoch (its cameras, pose errors, re-injected poses and hard-ray counts).
        centre: the scene centre (world units).
        hard_rays: the hard-ray level is on (draw its figure).
        render_pose: the teacher's image of one epoch pose (H, W, 3 in [0, 1]).
    """
    hardest, epoch, step = ended.hardest, ended.epoch, ended.step
    if hardest is not None and len(hardest):
        figure = hard_poses_figure(ended.cameras, centre, ended.from_pool, hardest, ended.pose_errors, epoch)
        _save(figure, directory, epoch, "poses", step)
    if hard_rays and len(ended.hard_ray_ids):
        if hardest is not None and len(hardest):
            pose_id = int(hardest[0])
        else:  # the pose with most hard rays
            height, width = ended.heat.shape
            pose_id = int(torch.bincount(ended.hard_ray_ids // (height * width)).argmax())
        figure = hard_rays_figure(render_pose(pose_id), ended.pose_heat(pose_id), ended.heat, pose_id, epoch)
        _save(figure, directory, epoch, "rays", step)
