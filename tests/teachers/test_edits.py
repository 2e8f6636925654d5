"""Scene edits (issue #34, pvdal_ns.teachers.edits): boxes as a user gives them, what an edit does at points, to the
occupancy grid and to a teacher's renders."""

import math
from pathlib import Path

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from pvdal_ns.field_components.scene_space import SceneSpace
from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers.base import ModelTeacher
from pvdal_ns.teachers.edits import ERASED_RAW_DENSITY, SceneEdit, check_edit, oriented_box, within
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError


def test_a_box_is_read_as_its_corners_or_oriented_and_an_empty_or_malformed_one_is_refused():
    corners = oriented_box([0, 0, 0, 1, 2, 3], "--erase")
    points = torch.tensor([[0.5, 1.0, 1.5], [0.5, 2.1, 1.5], [-0.1, 1.0, 1.0]])
    assert within(corners, points).tolist() == [True, False, False]
    # a unit cube turned 45° about z: its corners reach (±0.71, 0, 0) and (0, ±0.71, 0), its faces are 0.5 from the
    # centre along the diagonals, so it holds (0.6, 0, 0) and not (0.4, 0.4, 0), which the cube unturned holds
    turned = oriented_box([0, 0, 0, 0, 0, math.pi / 4, 1, 1, 1], "--erase")
    points = torch.tensor([[0.6, 0.0, 0.0], [0.4, 0.4, 0.0], [0.0, -0.6, 0.0]])
    assert within(turned, points).tolist() == [True, False, True]
    with pytest.raises(BadInputError, match=r"^--erase 1 0 0 0 1 1 is an empty box .*low corner first"):
        oriented_box([1, 0, 0, 0, 1, 1], "--erase")
    with pytest.raises(BadInputError, match=r"^--keep takes 6 numbers .* or 9 .*got 1 2$"):
        oriented_box([1, 2], "--keep")
    with pytest.raises(BadInputError, match=r"^--recolor's RGB 255 0 0 is not in \[0, 1\]"):
        check_edit(SceneEditConfig(recolor=[(0, 0, 0, 1, 1, 1, 255, 0, 0)]))
    with pytest.raises(BadInputError, match=r"cannot be fine-tuned on the training images"):
        check_edit(SceneEditConfig(erase=[(0, 0, 0, 1, 1, 1)]), finetune_steps=10)
    check_edit(SceneEditConfig(), finetune_steps=10)  # no edit: fine-tuning as before


def test_an_edit_empties_erased_and_unkept_points_and_recolours_the_rest():
    positions = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    teacher = PointOutputs(torch.full((4, 1), 3.0), torch.full((4, 3), 0.5), torch.ones(4, 16))
    erase = SceneEdit(SceneEditConfig(erase=[(0.4, -1, -1, 0.6, 1, 1)], keep=[(-1, -1, -1, 1, 1, 1)]))
    edited = erase.apply(positions, teacher)
    assert edited.raw_density[:, 0].tolist() == [3.0, ERASED_RAW_DENSITY, 3.0, 3.0]
    assert edited.phi1[:, 0].tolist() == [1.0, ERASED_RAW_DENSITY, 1.0, 1.0]  # ϕ¹'s density channel follows
    assert torch.equal(edited.phi1[:, 1:], teacher.phi1[:, 1:]) and torch.equal(edited.rgb, teacher.rgb)
    crop = SceneEdit(SceneEditConfig(keep=[(-0.7, -1, -1, 0.7, 1, 1)]))
    assert crop.apply(positions, teacher).raw_density[:, 0].tolist() == [3.0, 3.0, ERASED_RAW_DENSITY, 3.0]
    for mode, expected in (("replace", [1.0, 0.0, 0.0]), ("multiply", [0.5, 0.0, 0.0])):
        red = SceneEdit(SceneEditConfig(recolor=[(-1, -1, -1, 0.2, 1, 1, 1, 0, 0)], recolor_mode=mode))
        recoloured = red.apply(positions, teacher)
        assert recoloured.rgb[0].tolist() == expected and recoloured.rgb[3].tolist() == expected
        assert recoloured.rgb[1].tolist() == [0.5, 0.5, 0.5]
        assert recoloured.phi1 is None  # its features hold the old colours: no ϕ¹ (no L_v, no stage 1)


def test_the_grid_cells_wholly_emptied_by_an_edit_are_unoccupied_and_no_other():
    space = SceneSpace(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), False)
    grid = OccupancyGrid(space, 16)  # cells of 0.125
    grid.binaries[:] = True
    assert SceneEdit(SceneEditConfig(erase=[(-0.51, -0.51, -0.51, 0.51, 0.51, 0.51)])).empty_cells(grid) == 8**3
    grid.binaries[:] = True
    # kept: the 8 cells across the box and the 2 it cuts into, on each axis
    assert SceneEdit(SceneEditConfig(keep=[(-0.51, -0.51, -0.51, 0.51, 0.51, 0.51)])).empty_cells(grid) == 16**3 - 10**3


class Sphere(ModelTeacher):
    """A teacher whose scene is a dense grey ball of radius 0.5 at the origin, its ϕ¹ features all ``feature``, its
    ϕ² a linear colour head of weight ``head``."""

    def __init__(self, feature: float = 0.0, head: float = 0.5):
        scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
        sampling = Sampling(scene_box, grid_resolution=32, num_samples=256)
        grid = OccupancyGrid(sampling.space, 32)
        unit = (torch.stack(torch.meshgrid(*[torch.arange(32)] * 3, indexing="ij"), -1) + 0.5) / 32
        grid.binaries[0] = sampling.space.from_unit(unit).norm(dim=-1) < 0.6
        model = torch.nn.Module()
        model.field = torch.nn.Module()
        model.field.colour = torch.nn.Linear(1, 1)
        torch.nn.init.constant_(model.field.colour.weight, head)
        torch.nn.init.zeros_(model.field.colour.bias)
        self.feature = feature
        super().__init__(model, "sphere", grid, sampling,
                         Capability.RAYS | Capability.POINTS | Capability.VOLUME_FEATURE)

    def _query_points(self, positions, directions):
        raw = torch.where(positions.norm(dim=-1, keepdim=True) < 0.5, 5.0, -20.0)
        rgb = None if directions is None else torch.full_like(positions, 0.5)
        return PointOutputs(raw, rgb, torch.cat([raw, torch.full((len(raw), 15), self.feature)], -1))


def _rays(origins):
    origins = torch.tensor(origins)
    directions = torch.tensor([[0.0, 0.0, 1.0]]).expand_as(origins)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(len(origins), 1),
                     camera_indices=torch.zeros(len(origins), 1, dtype=torch.long))


def test_an_edited_teacher_renders_through_the_erased_part_and_a_box_holding_nothing_is_refused():
    rays = _rays([[0.25, 0.0, -1.5], [-0.25, 0.0, -1.5]])  # one through the half to erase, one through the other
    sphere = Sphere()
    assert sphere.render_rays(rays)["accumulation"][:, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    occupied = int(sphere.occupancy_grid.binaries.sum())
    sphere.apply_edit(SceneEdit(SceneEditConfig(erase=[(0.0, -1, -1, 1, 1, 1)])))
    opacity = sphere.render_rays(rays)["accumulation"][:, 0].tolist()
    assert opacity == pytest.approx([0.0, 1.0], abs=1e-3)
    assert int(sphere.occupancy_grid.binaries.sum()) < occupied * 0.6  # the erased half's cells are empty
    assert Capability.VOLUME_FEATURE in sphere.capabilities
    recoloured = Sphere()
    recoloured.apply_edit(SceneEdit(SceneEditConfig(recolor=[(0.0, -1, -1, 1, 1, 1, 1, 0, 0)])))
    rgb = recoloured.render_rays(rays)["rgb"]
    assert rgb[0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-3)
    assert rgb[1].tolist() == pytest.approx([0.5, 0.5, 0.5], abs=1e-3)
    assert Capability.VOLUME_FEATURE not in recoloured.capabilities
    with pytest.raises(BadInputError, match=r"^--erase 0.8 0.8 0.8 1 1 1 holds nothing the teacher renders"):
        Sphere().apply_edit(SceneEdit(SceneEditConfig(erase=[(0.8, 0.8, 0.8, 1, 1, 1)])))


def test_the_viewer_draws_a_runs_edit_boxes_and_writes_its_crop_box_as_an_edit():
    import types

    import viser
    from nerfstudio.data.scene_box import OrientedBox

    from pvdal_ns.viewer.conversion_panel import ConversionPanel, crop_box_numbers, edit_boxes

    chain = [{"erase": [[0, 0, 0, 1, 1, 1]], "keep": [], "recolor": [], "applied": "written into the SH voxels of …"}]
    edit = SceneEditConfig(recolor=[(0, 0, 0, 0.5, 0.5, 0.5, 1, 0, 0)])
    boxes = edit_boxes(chain, edit)
    assert [kind for kind, _ in boxes] == ["erase", "recolor"]
    assert boxes[1][1].S.tolist() == [0.5, 0.5, 0.5]

    crop = OrientedBox.from_params((0.1, -0.2, 0.3), (0.2, -0.1, 0.7), (0.4, 0.5, 0.6))
    numbers = crop_box_numbers(crop)  # the crop box → --keep numbers → the same box
    again = oriented_box(numbers, "--keep")
    points = torch.rand(2000, 3) - 0.5
    assert torch.equal(within(again, points), within(OrientedBox(crop.R.float(), crop.T.float(), crop.S.float()),
                                                      points))

    server = viser.ViserServer(port=0, verbose=False)
    try:
        scene_box = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
        cameras = types.SimpleNamespace(camera_to_worlds=torch.eye(4)[None, :3])
        panel = ConversionPanel(cameras, scene_box.mean(0), distilling=False, edits=boxes)
        panel.viewer = types.SimpleNamespace(viser_server=server, control_panel=types.SimpleNamespace(crop_obb=crop))
        panel.draw_edits()
        drawn = [name for name in server.scene._handle_from_node_name if name.startswith("/edits/")]
        assert len(drawn) == 2 * 12 and "/edits/erase_0/edge_0" in drawn  # 12 edges a box
        line = panel.show_crop_box()
        assert line == "--keep " + " ".join(f"{v:.4g}" for v in numbers) and line in panel.crop_edit.content
    finally:
        server.stop()


def test_a_second_teacher_composed_into_the_scene_is_rendered_moved_and_scaled_in_a_grown_box():
    from pvdal_ns.teachers.composed import ComposedTeacher

    composed = ComposedTeacher(Sphere(), Sphere(), offset=(1.2, 0.0, 0.0), scale=0.5)
    assert composed.scene_box.aabb.flatten().tolist() == pytest.approx([-1, -1, -1, 1.7, 1, 1])  # both boxes
    # the first ball (radius 0.5 at 0), the second (radius 0.25 at x = 1.2), and the gap between them
    opacity = composed.render_rays(_rays([[0.0, 0.0, -1.5], [1.2, 0.0, -1.5], [0.85, 0.0, -1.5]]))["accumulation"]
    assert opacity[:, 0].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-3)
    at = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [1.2, 0.0, 0.7]])
    density = composed.query_points(at).density[:, 0].tolist()
    assert density[1] == pytest.approx(2 * density[0], rel=1e-4) and density[2] < 1e-6  # σ₂((x − t)/s)/s
    assert composed.occupancy_grid.occupied(at).tolist() == [True, True, False]
    assert composed.name == "Module + Module"
    # what a teacher's own grid leaves out its renders never sample: the composition leaves it out too, though the
    # composed grid's cells, which do not line up with the teacher's, reach there
    hazy = Sphere()
    hazy.occupancy_grid.binaries[0, 20:] = False  # its cells from x = 0.25 on: its density at x = 0.4 is never rendered
    inside = torch.tensor([[0.4, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert hazy.query_points(inside).density[:, 0].tolist() == pytest.approx([math.exp(5.0)] * 2)
    density = ComposedTeacher(hazy, Sphere(), offset=(1.2, 0.0, 0.0), scale=0.5).query_points(inside).density[:, 0]
    assert density[0] < 1e-6 and float(density[1]) == pytest.approx(math.exp(5.0))
    # a teacher sampling with proposal fields: its grid says nothing (a pvdal-* run's stays empty), its density does
    proposals = Sphere()
    proposals.occupancy_grid.binaries[:] = False
    proposals.proposal_sampler = torch.nn.Identity()  # stands for its ProposalSampler, which the composition never runs
    composed = ComposedTeacher(proposals, Sphere(), offset=(1.2, 0.0, 0.0), scale=0.5)
    assert composed.occupancy_grid.occupied(at).tolist() == [True, True, False]
    assert composed.render_rays(_rays([[0.0, 0.0, -1.5]]))["accumulation"][0, 0] == pytest.approx(1.0, abs=1e-3)


def test_a_grid_on_another_lattice_is_marked_with_exactly_the_cells_an_occupied_cell_overlaps():
    source = OccupancyGrid(SceneSpace(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), False), 4)  # cells 0.5 wide
    source.binaries[0, 1, 1, 1] = True  # the cell [-0.5, 0]³
    shifted = OccupancyGrid(SceneSpace(torch.tensor([[-0.75, -0.75, -0.75], [1.25, 1.25, 1.25]]), False), 4)
    shifted.mark(source.occupied_cell_points(2), dilation=0)
    # it overlaps [-0.75, -0.25] and [-0.25, 0.25] along each axis: 8 cells, not the 27 of a centre grown by one
    assert shifted.binaries[0].nonzero().tolist() == [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]


def test_a_composed_teacher_gives_phi1_only_where_both_teachers_decode_their_features_with_one_colour_head():
    from pvdal_ns.teachers.composed import ComposedTeacher

    # one ϕ² (a copy of a scene beside it): ϕ¹ is the composed log density with the denser teacher's features
    composed = ComposedTeacher(Sphere(feature=1.0), Sphere(feature=2.0), offset=(1.2, 0.0, 0.0), scale=0.5)
    assert Capability.VOLUME_FEATURE in composed.capabilities
    at = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [1.2, 0.0, 0.7]])
    outputs = composed.query_points(at)
    assert torch.equal(outputs.phi1[:, :1], outputs.raw_density)
    assert outputs.phi1[:, 0].tolist() == pytest.approx([5.0, 5.0 + math.log(2.0), math.log(1e-9)], abs=1e-4)
    assert outputs.phi1[:2, 1:].mean(-1).tolist() == [1.0, 2.0]
    # two colour heads: the same features stand for other colours, which one student ϕ² cannot learn
    other = ComposedTeacher(Sphere(head=0.5), Sphere(head=0.8), offset=(1.2, 0.0, 0.0), scale=0.5)
    assert Capability.VOLUME_FEATURE not in other.capabilities and other.query_points(at).phi1 is None
    with pytest.raises(BadInputError, match=r"--offset 0 0 0 --scale 0: the offset must be finite and the scale"):
        check_edit(SceneEditConfig(compose=Path(__file__), scale=0.0))


def test_a_splatfacto_teachers_gaussians_are_dropped_and_recoloured_by_where_their_means_fall():
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    from pvdal_ns.teachers.stock import SplatfactoTeacher
    from pvdal_ns.utils.library_internals import offline_lpips

    scene_box = SceneBox(aabb=torch.tensor([[-5.0, -5, -5], [5, 5, 5]]))
    with offline_lpips():  # random Gaussians in the box, on the CPU (rendering them needs CUDA; editing does not)
        model = SplatfactoModelConfig(num_random=2000).setup(scene_box=scene_box, num_train_data=1, metadata={})
    model.gauss_params["opacities"].data[:] = 0.0  # every Gaussian visible (opacity 0.5)
    teacher = SplatfactoTeacher(model, Path("splat"), Sampling(scene_box, grid_resolution=16))
    means = model.means.detach().clone()
    colours, rest = model.colors.detach().clone(), model.features_rest.detach().clone()
    occupied = int(teacher.occupancy_grid.binaries.sum())
    tint = SceneEdit(SceneEditConfig(erase=[(0, -5, -5, 5, 5, 5)], recolor=[(-5, -5, -5, -1, 5, 5, 0.5, 1.0, 0.25)],
                                     recolor_mode="multiply"))
    teacher.apply_edit(tint)
    erased, tinted = means[:, 0] > 0, means[:, 0] < -1
    opacity = torch.sigmoid(model.opacities.detach())[:, 0]
    assert bool((opacity[erased] < 1e-8).all()) and bool((opacity[~erased] == 0.5).all())
    factor = torch.tensor([0.5, 1.0, 0.25])
    assert torch.allclose(model.colors.detach()[tinted], colours[tinted] * factor, atol=1e-5)  # exact, before clamping
    assert torch.allclose(model.features_rest.detach()[tinted], rest[tinted] * factor)
    middle = ~erased & ~tinted
    assert torch.equal(model.colors.detach()[middle], colours[middle])
    assert int(teacher.occupancy_grid.binaries.sum()) < occupied  # marked again from the Gaussians kept
    replace = SplatfactoTeacher(model, Path("splat"), Sampling(scene_box, grid_resolution=16))
    replace.apply_edit(SceneEdit(SceneEditConfig(recolor=[(-5, -5, -5, -1, 5, 5, 1, 0, 0)])))
    assert torch.allclose(model.colors.detach()[tinted], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert bool((model.features_rest.detach()[tinted] == 0).all())
    with pytest.raises(BadInputError, match=r"^--erase 1 -5 -5 5 5 5 holds no Gaussian of the teacher"):
        replace.apply_edit(SceneEdit(SceneEditConfig(erase=[(1, -5, -5, 5, 5, 5)])))  # all dropped already
