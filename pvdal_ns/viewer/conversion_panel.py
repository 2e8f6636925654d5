"""The conversion in nerfstudio's viewer (docs/design.md, "The viewer").

* :class:`TeacherComparison`: the teacher rendered at the viewer's camera beside the student, as output
  types of nerfstudio's "Output type" list (``teacher_rgb``, ``teacher_depth``, ``error``, ``split``,
  ``hard_rays``). The model adds them to its outputs while the viewer holds a teacher
  (``PVDModel.comparison``); evaluation without a viewer never renders the teacher.
* :class:`ConversionPanel`: nerfstudio viewer elements on the pipeline (scraped by the ``Viewer`` into "Custom
  Elements/conversion"): the stage, each loss term, PSNR against the teacher and the active-learning pools,
  refreshed at most twice a second; the hard-pose pool as camera frustums coloured by their error; and the
  first camera of every browser tab framing the scene (:func:`first_view`).

Nothing here draws random numbers or switches the teacher's ``train()``/``eval()``: a render request of the
viewer leaves the training batches and the random stream as they were.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import viser
import viser.transforms as vtf
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.utils.colormaps import ColormapOptions, apply_colormap
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as VISER_SCALE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerControl, ViewerElement
from torch import Tensor, nn

from pvdal_ns.active_learning.active_learning import ActiveLearning, HardPosePool
from pvdal_ns.model_components.losses import ray_rgb_errors
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers import Teacher
from pvdal_ns.teachers.edits import oriented_box

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

COMPARISON_OUTPUTS = ("teacher_rgb", "teacher_depth", "error", "split", "hard_rays")
"""The outputs a teacher adds to the student's render in the viewer."""
DIVIDER = (0.133, 0.157, 0.192)
"""The colour of ``split``'s middle column: nerfstudio's split-screen line."""
LOSS_TERMS = {"volume_loss": "L_v", "density_loss": "L_σ", "colour_loss": "L_c", "rgb_loss": "L_rgb",
              "regularization": "L_reg"}
"""Loss-dict keys (``PVDModel.get_loss_dict``) and their names in the paper (Eq. 7)."""


class TeacherComparison:
    """The teacher at the student's render of a camera, for the viewer.

    Args:
        teacher: a teacher that renders any ray (``Capability.RAYS``).
        renderer_rgb: the student's RGB renderer: the teacher is composited on the colour it gives an empty ray.
        ray_fraction: the fraction of a batch that enters the hard-ray pool (TSR, ``al.ray_fraction``).
        chunk: rays rendered by the teacher at a time.
    """

    def __init__(self, teacher: Teacher, renderer_rgb: RGBRenderer, ray_fraction: float, chunk: int = 1 << 14) -> None:
        assert Capability.RAYS in teacher.capabilities, f"{teacher.name} renders no rays"
        self.teacher, self.renderer_rgb, self.ray_fraction, self.chunk = teacher, renderer_rgb, ray_fraction, chunk

    @torch.no_grad()
    def __call__(self, camera_ray_bundle: RayBundle, student: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The comparison outputs of one camera.

        Args:
            camera_ray_bundle: RayBundle [H, W] of the camera (nerfstudio's ``get_outputs_for_camera``).
            student: the student's outputs of it, ``rgb`` Float[Tensor, "H W 3"] among them.

        Returns:
            ``teacher_rgb`` and ``split`` (teacher left of the middle column, student right of it, the column
            itself :data:`DIVIDER`, as nerfstudio's "Split Screen" draws its line)
            Float[Tensor, "H W 3"]; ``teacher_depth`` (scene units), ``error`` (|student − teacher|, mean over
            RGB) and ``hard_rays`` (the squared error of the view's rays TSR would take as hard, the top
            ``ray_fraction`` of them, as of a batch; 0 elsewhere) Float[Tensor, "H W 1"].
        """
        height, width = camera_ray_bundle.shape[:2]
        rays = camera_ray_bundle.flatten().to(student["rgb"].device)
        teacher = self.teacher.render_rays(rays, self.chunk)
        empty = torch.zeros(1, 1, 3, device=rays.origins.device)
        background = self.renderer_rgb.combine_rgb(empty, empty[..., :1],
                                                   background_color=self.renderer_rgb.background_color)
        teacher_rgb = (teacher["rgb"] + (1.0 - teacher["accumulation"]) * background).view(height, width, 3)
        student_rgb = student["rgb"]
        errors = ray_rgb_errors(student_rgb.reshape(-1, 3), teacher_rgb.view(-1, 3))
        hard = torch.zeros_like(errors)
        k = max(1, round(self.ray_fraction * len(errors)))
        top = torch.topk(errors, k).indices
        hard[top] = errors[top]
        middle = width // 2
        split = torch.cat([teacher_rgb[:, :middle], student_rgb[:, middle:]], dim=1)
        split[:, middle] = torch.tensor(DIVIDER, device=split.device)
        return {
            "teacher_rgb": teacher_rgb,
            "teacher_depth": teacher["depth"].view(height, width, 1),
            "error": (student_rgb - teacher_rgb).abs().mean(dim=-1, keepdim=True),
            "split": split,
            "hard_rays": hard.view(height, width, 1),
        }


class ViewerMarkdown(ViewerElement[str]):
    """Read-only text in the viewer's panel (viser markdown). Unlike a ``ViewerText`` its updates call no
    callback, so they never make the viewer render again."""

    def __init__(self, name: str, content: str = "") -> None:
        super().__init__(name)
        self.content = content

    def _create_gui_handle(self, viser_server: viser.ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self.content)  # type: ignore[assignment]

    def install(self, viser_server: viser.ViserServer) -> None:
        self._create_gui_handle(viser_server)

    def show(self, content: str) -> None:
        """Replace the text (sent to the browser only when it changed)."""
        if content != self.content:
            self.content = content
            if self.gui_handle is not None:
                self.gui_handle.content = content  # type: ignore[union-attr]


class _OnViewer(ViewerControl):
    """Calls back when the viewer sets up its controls (after the panel's elements are installed)."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def _setup(self, viewer: "Viewer") -> None:
        super()._setup(viewer)
        self.callback(viewer)


EDIT_COLOURS = {"erase": (230, 60, 60), "keep": (60, 190, 90), "recolor": (60, 120, 230)}
"""The colour each kind of edit box is drawn in (:meth:`ConversionPanel.draw_edits`)."""

_BOX_EDGES = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]


def edit_boxes(edits_before: Sequence[Dict[str, Any]], edit: Any) -> List[Tuple[str, OrientedBox]]:
    """Every box of a run's edits, in order (``pipeline.edits_before``, then ``pipeline.edit``): (kind, box), kind
    "erase", "keep" or "recolor"; a recolour box without its RGB."""
    boxes = []
    for entry in [*edits_before, *([edit.key()] if edit is not None and not edit.empty else [])]:
        for kind in ("keep", "erase", "recolor"):
            for numbers in entry.get(kind, []):
                boxes.append((kind, oriented_box(numbers[:-3] if kind == "recolor" else numbers, f"--{kind}")))
    return boxes


def crop_box_numbers(box: OrientedBox) -> List[float]:
    """The 9 numbers of an oriented box as ``--erase``/``--keep`` take them (and ``ns-export``'s ``--obb-center
    --obb-rotation --obb-scale``): centre, roll pitch yaw (radians), sides; world units."""
    rpy = vtf.SO3.from_matrix(box.R.double().numpy()).as_rpy_radians()
    return [*box.T.tolist(), float(rpy.roll), float(rpy.pitch), float(rpy.yaw), *box.S.tolist()]


@dataclass(frozen=True)
class FirstView:
    """A browser tab's first camera (world units; the viewer scales them by ``VISER_NERFSTUDIO_SCALE_RATIO``)."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float
    """Vertical field of view (radians), as viser's and nerfstudio's viewer cameras take it."""


FILL = 0.9
"""The fraction of the first view's height the occupied region spans (:func:`first_view`)."""


def first_view(cameras: Cameras, centre: Float[Tensor, "3"], grid: Optional[OccupancyGrid] = None) -> FirstView:
    """The first camera of a browser tab: the scene large in the middle of the view, from where the training
    cameras stand.

    It stands half-way between the first training camera and its nearest neighbour (so neither frustum hides
    the scene), up as the training cameras' mean up. Around an object (the training cameras outside the
    scene box, ``grid`` not contracted) it looks at the middle of the occupied region of ``grid`` (its occupied
    cells, the farthest 0.5 % on each axis left out as floaters) from the training cameras' median distance
    to that point, with the vertical field of view in which the region spans :data:`FILL` of the view's
    height. Otherwise (a capture with its cameras inside the box, an empty grid, no grid) it looks at
    ``centre`` from the first training camera's distance, with the training cameras' vertical field of view.
    nerfstudio's viewer keeps its own 75° otherwise, in which a blender object fills a small part of the view.

    Args:
        cameras: the training cameras.
        centre: Float[Tensor, "3"] the scene box's centre (world units).
        grid: the model's occupancy grid (world positions of its cells through its :class:`SceneSpace`).
    """
    c2ws = cameras.camera_to_worlds.detach().cpu().double()
    centres = c2ws[:, :3, 3]
    up = c2ws[:, :3, 1].mean(dim=0)
    up = up / up.norm().clamp(min=1e-9)
    camera = cameras[0]
    fov = float(2 * torch.atan(camera.cy.cpu() / camera.fy.cpu()).flatten()[0])
    target = centre.detach().cpu().double()
    occupied = None
    if grid is not None and not grid.space.contracted:
        cells = grid.occupied_centres().detach().cpu().double()
        if len(cells) > 0:
            occupied = cells
            if len(occupied) > 1 << 20:  # torch.quantile's limit; a strided sample is as good for the bounds
                occupied = occupied[:: len(occupied) // (1 << 20) + 1]
            lo, hi = torch.quantile(occupied, torch.tensor([0.005, 0.995], dtype=torch.float64), dim=0)
            target = (lo + hi) / 2
    if len(centres) > 1:
        gaps = (centres - centres[0]).norm(dim=-1)
        gaps[0] = float("inf")
        middle = (centres[0] + centres[int(gaps.argmin())]) / 2 - target
    else:
        middle = centres[0] - target
    distance = (centres - target).norm(dim=-1).median() if occupied is not None else (centres[0] - target).norm()
    position = target + middle / middle.norm().clamp(min=1e-9) * distance
    if occupied is not None:
        axis = (target - position) / (target - position).norm()
        rays = occupied - position
        off_axis = torch.atan2(torch.linalg.cross(rays, axis.expand_as(rays)).norm(dim=-1), rays @ axis)
        half = float(torch.quantile(off_axis, 0.995))
        fov = 2 * float(np.arctan(np.tan(half) / FILL))
        fov = min(max(fov, np.radians(5.0)), np.radians(120.0))
    return FirstView(position.numpy(), target.numpy(), up.numpy(), fov)


class ConversionPanel(nn.Module):
    """The conversion's viewer elements; an ``nn.Module`` without parameters only so that nerfstudio's
    ``Viewer`` scrapes its elements from the pipeline (``viewer.utils.parse_object``). Nothing of it is saved.

    Args:
        cameras: the training cameras (the first browser camera stands among them, :func:`first_view`; the
            hard-pose frustums take their intrinsics).
        centre: Float[Tensor, "3"] the scene centre (world units).
        distilling: show the distillation's panel (stage, losses, pools) and the hard-pose frustums.
    """

    def __init__(self, cameras: Cameras, centre: Float[Tensor, "3"], distilling: bool,
                 edits: Sequence[Tuple[str, OrientedBox]] = ()) -> None:
        super().__init__()
        self.edits = list(edits)
        """The run's edit boxes (:func:`edit_boxes`), drawn as wire boxes when a viewer opens."""
        self.crop_as_edit = ViewerButton("Crop box as an edit", cb_hook=lambda _: self.show_crop_box())
        self.crop_edit = ViewerMarkdown("Crop box edit", "Turn on the crop box (Crop Viewport), place it, then press "
                                        "the button: the box as --keep / --erase numbers")
        self.cameras, self.centre = cameras, centre.cpu()
        distance = float((cameras.camera_to_worlds[:, :3, 3].cpu() - self.centre).norm(dim=-1).median())
        self._frustum_depth = 0.08 * distance * VISER_SCALE  # nerfstudio's 0.1 viser units: a speck from that far
        self.teacher: Optional[Teacher] = None
        """The teacher the viewer compares the student with (:meth:`compare_with`)."""
        self.ray_fraction = 0.1
        self.viewer: Optional["Viewer"] = None
        self.on_viewer = _OnViewer(self._attach)
        self.status = ViewerMarkdown("Distillation") if distilling else None
        self.show_hard_poses = (ViewerCheckbox("Show hard poses", True,
                                               cb_hook=lambda box: self._set_visible(box.value),
                                               hint="The hard-pose pool (TCP) as frustums, coloured by their error")
                                if distilling else None)
        self._frustums: List[viser.CameraFrustumHandle] = []
        self._drawn: Optional[tuple] = None
        self._shown_at = 0.0

    def compare_with(self, teacher: Optional[Teacher], ray_fraction: float) -> None:
        """Give the viewer ``teacher`` to compare the student with (None: no comparison); one that renders no
        rays (a teacher cache, splatfacto) is left out with one log line when a viewer opens."""
        self.teacher, self.ray_fraction = teacher, ray_fraction

    def _attach(self, viewer: "Viewer") -> None:
        self.viewer = viewer
        model = viewer.get_model()
        if self.teacher is not None and Capability.RAYS not in self.teacher.capabilities:
            CONSOLE.log(f"Viewer: {self.teacher.name} renders no rays, so the viewer shows the student alone")
        elif self.teacher is not None:
            model.comparison = TeacherComparison(self.teacher, model.renderer_rgb, self.ray_fraction)  # type: ignore[union-attr]
            CONSOLE.log(f"Viewer: output types {', '.join(COMPARISON_OUTPUTS)} compare the student with "
                        f"{self.teacher.name}")
        viewer.viser_server.on_client_connect(self._first_camera)
        self.draw_edits()
        pools = getattr(viewer.pipeline, "batch_pools", None)
        if self.status is not None and pools is not None:
            self.draw_hard_poses(pools.hard_poses)
            self.status.show(_pools_markdown(pools.metrics()))

    def _first_camera(self, client: viser.ClientHandle) -> None:
        """A new browser tab starts at :func:`first_view` of the training cameras and the model's occupancy grid as
        it is now (a run from images grows its grid as it trains)."""
        grid = getattr(self.viewer.get_model(), "occupancy_grid", None) if self.viewer is not None else None
        view = first_view(self.cameras, self.centre, grid)
        with client.atomic():
            client.camera.up_direction = view.up
            client.camera.fov = view.fov
            client.camera.position = view.position * VISER_SCALE
            client.camera.look_at = view.look_at * VISER_SCALE

    def show(self, step: int, losses: Dict[str, Tensor], metrics: Dict[str, Tensor], pools: ActiveLearning) -> None:
        """After a training step: the panel's text (at most twice a second) and the hard-pose frustums (when the
        pool changed, i.e. once an epoch). Does nothing until a viewer is open.

        Args:
            step: the step just trained.
            losses, metrics: its loss and metric dicts (``PVDModel.get_loss_dict``, ``get_metrics_dict``).
            pools: the active learning whose pools draw this student's batches (a follower shows its leader's).
        """
        if self.viewer is None or self.status is None:
            return
        now = time.monotonic()
        if now - self._shown_at < 0.5:
            return
        self._shown_at = now
        lines = [f"**Step {step}**, stage {int(metrics['stage'])}" if "stage" in metrics else f"**Step {step}**", ""]
        lines += [f"- {name} {float(losses[key]):.3g}" for key, name in LOSS_TERMS.items() if key in losses]
        if "psnr_vs_teacher" in metrics:
            lines.append(f"- PSNR vs teacher {float(metrics['psnr_vs_teacher']):.2f} dB")
        self.status.show("\n".join(lines) + "\n\n" + _pools_markdown(pools.metrics() if pools.active_at(step) else {}))
        self.draw_hard_poses(pools.hard_poses)

    def draw_hard_poses(self, pool: HardPosePool) -> None:
        """The pool's poses as camera frustums (as nerfstudio draws the training cameras, with their intrinsics,
        each 8 % of the training cameras' distance to the scene centre deep), coloured by their error when they
        entered (turbo, from the pool's least to its largest)."""
        if self.viewer is None:
            return
        drawn = (len(pool.poses), pool.next_slot, float(pool.errors.sum()) if len(pool.errors) else 0.0)
        if drawn == self._drawn:
            return
        self._drawn = drawn
        for handle in self._frustums:
            handle.remove()
        self._frustums = []
        if len(pool.poses) == 0:
            return
        errors = pool.errors.float()
        span = errors.max() - errors.min()
        level = (errors - errors.min()) / span if span > 0 else torch.full_like(errors, 0.5)
        colours = apply_colormap(level[:, None], ColormapOptions(colormap="turbo"))
        camera = self.cameras[0]
        fov = float(2 * torch.arctan(camera.cx / camera.fx[0]))
        aspect = float(camera.cx[0] / camera.cy[0])
        visible = self.show_hard_poses is None or bool(self.show_hard_poses.value)
        server = self.viewer.viser_server
        for i, (c2w, colour) in enumerate(zip(pool.poses.numpy(), colours.numpy())):
            rotation = vtf.SO3.from_matrix(c2w[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)
            self._frustums.append(server.scene.add_camera_frustum(
                f"/hard_poses/pose_{i:03d}", fov=fov, aspect=aspect, scale=self._frustum_depth,
                color=tuple(int(255 * c) for c in colour), wxyz=rotation.wxyz, position=c2w[:3, 3] * VISER_SCALE,
                visible=visible))

    def draw_edits(self) -> None:
        """The run's edit boxes as wire boxes in the scene (``/edits/<kind>_<i>``), in :data:`EDIT_COLOURS`."""
        if self.viewer is None:
            return
        server = self.viewer.viser_server
        corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        for i, (kind, box) in enumerate(self.edits):
            world = (corners * box.S.float()) @ box.R.float().T + box.T.float()
            points = (world * VISER_SCALE).numpy()
            for j, (a, b) in enumerate(_BOX_EDGES):
                server.scene.add_spline_catmull_rom(f"/edits/{kind}_{i}/edge_{j}", np.stack([points[a], points[b]]),
                                                    color=EDIT_COLOURS[kind], line_width=3.0)

    def show_crop_box(self) -> str:
        """The viewer's crop box (its Crop Viewport controls) as an edit's numbers, shown in the panel and logged;
        returns the ``--keep …`` line."""
        if self.viewer is None:
            return ""
        numbers = " ".join(f"{v:.4g}" for v in crop_box_numbers(self.viewer.control_panel.crop_obb))
        line = f"--keep {numbers}"
        self.crop_edit.show(f"`{line}` (or `--erase {numbers}`)")
        CONSOLE.log(f"Viewer: the crop box as an edit: {line} (or --erase {numbers})")
        return line

    def _set_visible(self, visible: bool) -> None:
        for handle in self._frustums:
            handle.visible = visible


def _pools_markdown(metrics: Dict[str, Tensor]) -> str:
    """The active-learning pools in one line of the panel."""
    if "al_ray_pool_fill" not in metrics:
        return "Active learning: not started"
    return (f"Hard-ray pool {100 * float(metrics['al_ray_pool_fill']):.0f} % full, "
            f"hard-pose pool {int(metrics['al_pose_pool_size'])} poses")
