"""Unbounded scenes: field coordinates of the scene box or of all of space contracted (docs/design.md, "Scenes")."""

import json
from pathlib import Path

import torch

from pvdal_ns import EMBEDDED_CAPTURE, EMBEDDED_SCENE
from pvdal_ns.field_components.scene_space import LInfSceneContraction, SceneSpace, cameras_inside_box

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_contraction_maps_all_of_space_into_the_unit_cube_and_back():
    space = SceneSpace(AABB, contracted=True)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 0.9], [3.0, 0.0, 0.0], [-50.0, 20.0, 1.0], [1e4, 1e4, -1e4]])
    u = space.to_unit(x)
    assert ((u >= 0) & (u <= 1)).all()
    assert torch.allclose(u[:2], (x[:2] + 2) / 4)  # the box is kept as it is, in the middle half of each axis
    assert torch.allclose(u[2], torch.tensor([0.5 + (2 - 1 / 3) / 4, 0.5, 0.5]))
    assert torch.allclose(space.from_unit(u[:4]), x[:4], rtol=1e-4, atol=1e-4)


def test_the_contraction_is_nerfstudios_l_inf_scene_contraction():
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    x = torch.cat([torch.randn(1000, 3) * scale for scale in (0.3, 1.0, 10.0, 1e3)])
    x[0] = torch.tensor([1.0, -1.0, 0.5])  # on the box's surface, a tie of the largest coordinates
    assert torch.allclose(LInfSceneContraction()(x), SceneContraction(order=float("inf"))(x), rtol=1e-6, atol=1e-6)


def test_a_bounded_space_is_the_scene_box():
    space = SceneSpace(AABB * 1.5, contracted=False)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.5, -1.5, 0.75]])
    assert torch.allclose(space.to_unit(x), torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.75]]))
    assert torch.allclose(space.from_unit(space.to_unit(x)), x)
    assert (space.to_unit(torch.tensor([[4.0, 0.0, 0.0]])) > 1).any()  # outside: not in any grid


def _origins(transforms: Path) -> torch.Tensor:
    frames = json.loads(transforms.read_text())["frames"]
    return torch.tensor([f["transform_matrix"] for f in frames])[:, :3, 3]


def test_auto_contracts_captures_whose_cameras_stand_inside_the_box():
    lego_box = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])  # blender-data's
    assert not cameras_inside_box(_origins(EMBEDDED_SCENE / "transforms_train.json"), lego_box)
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    outputs = NerfstudioDataParserConfig(data=EMBEDDED_CAPTURE).setup().get_dataparser_outputs("train")
    assert cameras_inside_box(outputs.cameras.camera_to_worlds[:, :, 3], outputs.scene_box.aabb)


def test_early_stop_leaves_out_the_samples_behind_a_wall():
    from nerfstudio.cameras.rays import RayBundle

    from pvdal_ns.model_components.sampling import PackedSamples, visible

    bundle = RayBundle(origins=torch.zeros(2, 3), directions=torch.tensor([[0.0, 0.0, 1.0]] * 2),
                       pixel_area=torch.ones(2, 1), nears=torch.zeros(2, 1), fars=torch.full((2, 1), 10.0))
    edges = torch.linspace(0, 10, 11)
    samples = bundle.get_ray_samples(edges[:-1].expand(2, 10)[..., None], edges[1:].expand(2, 10)[..., None])
    density = torch.zeros(2, 10, 1)
    density[0, 4] = 100.0  # an opaque wall on the first ray, nothing on the second
    seen = visible(PackedSamples.pack(samples, torch.ones(2, 10, dtype=torch.bool)), density.view(20, 1),
                   early_stop_eps=1e-4).view(2, 10)
    assert seen[0, :5].all() and not seen[0, 5:].any()
    assert seen[1].all()
