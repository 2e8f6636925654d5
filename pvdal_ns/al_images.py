"""What active learning picked, as images (paper Fig. 7): the hard poses' frustums among the epoch's
poses, and a per-pixel heat map of the hard rays. Written as PNGs beside the run's checkpoints
(``<run>/active_learning/epoch-NNNN-{poses,rays}.png``) and logged to tensorboard through nerfstudio's
writer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.utils import writer
from torch import Tensor

from pvdal_ns.report import _write_atomic

if TYPE_CHECKING:
    from pvdal_ns.datamanager import DistillationDataManager


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


def hard_poses_figure(dm: "DistillationDataManager", hardest: Tensor, errors: Tensor):
    """Frustums of the epoch's poses: grey fresh, blue re-injected from the pool, red the hardest that
    entered the pool (darker = larger error). Fig. 7a.

    Args:
        dm: the datamanager whose epoch just ended (its poses, intrinsics, ``from_pool`` and scene centre).
        hardest: Int[Tensor, "K"] epoch pose ids that entered the pool.
        errors: Float[Tensor, "N"] mean squared RGB error of each epoch pose (NaN: not measured).

    Returns:
        a matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    cams = dm.pseudo_cameras
    c2w = cams.camera_to_worlds.detach().cpu()
    scale = 0.15 * float((c2w[:, :, 3] - dm.pose_sampler.centre).norm(dim=-1).mean())
    lines = frustum_lines(c2w, float(cams.fx[0]), float(cams.fy[0]), float(cams.width[0]), float(cams.height[0]), scale)
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    top = float(errors[hardest].max()) if len(hardest) else 1.0
    hard = set(hardest.tolist())
    colours, widths = [], []
    for i in range(len(c2w)):
        if i in hard:
            colour, width = plt.cm.Reds(0.4 + 0.6 * float(errors[i]) / top), 1.6
        else:
            colour, width = ("tab:blue", 0.9) if bool(dm.from_pool[i]) else ("0.7", 0.5)
        colours += [colour] * lines.shape[1]
        widths += [width] * lines.shape[1]
    ax.add_collection3d(Line3DCollection(lines.reshape(-1, 2, 3).numpy(), colors=colours, linewidths=widths))
    ax.scatter(*dm.pose_sampler.centre.numpy(), color="k", s=10)
    half = float(lines.reshape(-1, 3).sub(dm.pose_sampler.centre).abs().max())
    for centre, set_lim in zip(dm.pose_sampler.centre.tolist(), (ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(centre - half, centre + half)  # equal scale on all axes
    ax.set_box_aspect((1, 1, 1))
    ax.set_title(f"epoch {dm.epoch}: hard poses (red), re-injected (blue)", fontsize=9)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
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


def _save(fig, name: str, dm: "DistillationDataManager", step: int) -> None:
    import matplotlib.pyplot as plt

    assert dm.image_dir is not None
    dm.image_dir.mkdir(parents=True, exist_ok=True)
    image = _figure_to_tensor(fig)
    _write_atomic(dm.image_dir / f"epoch-{dm.epoch:04d}-{name}.png", lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    writer.put_image(name=f"active_learning/hard_{name}", image=image, step=step)


@torch.no_grad()
def write_epoch_images(dm: "DistillationDataManager", hardest: Optional[Tensor], step: int) -> None:
    """The images of the epoch that just ended (called by the datamanager before it draws new poses):
    ``<run>/active_learning/epoch-NNNN-{poses,rays}.png``, written atomically, and the same images to
    nerfstudio's writer (tensorboard) at ``step``.

    Args:
        hardest: epoch pose ids that entered the hard-pose pool, hardest first; None with poses off.
    """
    al = dm.active_learning
    assert al is not None and dm.teacher is not None
    errors = al.hard_poses.pose_errors()
    if hardest is not None and len(hardest):
        _save(hard_poses_figure(dm, hardest, errors), "poses", dm, step)
    if al.config.rays and al.hard_ray_ids:
        if hardest is not None and len(hardest):
            pose_id = int(hardest[0])
        else:  # the pose with most hard rays
            height, width = al.image_size
            pose_id = int(torch.bincount(torch.cat(al.hard_ray_ids) // (height * width)).argmax())
        render = dm.teacher.render_camera(dm.pseudo_cameras[pose_id : pose_id + 1])
        _save(hard_rays_figure(render, al.pose_heat(pose_id), al.heat, pose_id, dm.epoch), "rays", dm, step)
